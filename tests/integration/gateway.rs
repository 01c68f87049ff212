//! Gateway mode: TLS listener, callers identified by client certificate or caller token,
//! each held to its own grants and sent with its own key; 401 for the unidentified, 429
//! over a caller's rate; listener certificate rotation without a restart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls_pki_types::{CertificateDer, ServerName};
use sidekey::pki::{Ca, Leaf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

const BILLING_KEY: &str = "sk_live_BILLING_key_000000000001";
const CI_KEY: &str = "sk_test_CI_key_00000000000000002";
const CI_TOKEN: &str = "skc_ci-token-for-tests-only-0001";
const OTHER_TOKEN: &str = "skc_other-token-for-tests-0002";
const LIMITED_TOKEN: &str = "skc_limited-token-for-tests-003";

/// The gateway's PKI: a listener CA (the callers trust it) and a client CA.
struct Pki {
    listener_ca: Ca,
    clients_ca: Ca,
}

impl Pki {
    fn new() -> Self {
        Self {
            listener_ca: Ca::new("gateway listener CA").unwrap(),
            clients_ca: Ca::new("gateway clients CA").unwrap(),
        }
    }
}

fn sha(token: &str) -> String {
    sidekey::proxy::caller::token_sha256(token)
}

fn gateway_config(upstream_url: &str) -> String {
    format!(
        r#"
[listener]
address = "127.0.0.1:0"

[listener.tls]
cert_file = "tls/tls.crt"
key_file = "tls/tls.key"
client_ca_file = "tls/clients-ca.pem"

[admin]
address = "127.0.0.1:0"

[upstream]
url = "{upstream_url}"
ca_file = "ca.pem"
connect_timeout = "1s"
response_timeout = "2s"

[credential]
file = "secret/api-key"

[runtime]
shutdown_idle = "50ms"
shutdown_grace = "5s"

[reload]
interval = "30s"
debounce = "50ms"

[permissions]
"sandbox_sessions:create" = ["POST /v1/sandboxes"]
"sandbox_sessions:read" = ["GET /v1/sandboxes", "GET /v1/sandboxes/{{id}}"]
"org:billing" = ["GET /v1/org/billing"]

[[caller]]
name = "billing-dashboard"
client_cert_san = "spiffe://corp/billing-dashboard"
allow = ["org:billing"]
credential = {{ file = "secret/billing-key" }}

[[caller]]
name = "ci-e2e"
token_sha256 = "{ci}"
allow = ["sandbox_sessions:create", "sandbox_sessions:read"]
credential = {{ file = "secret/ci-key" }}

[[caller]]
name = "other-tool"
token_sha256 = "{other}"
allow = ["sandbox_sessions:read"]

[[caller]]
name = "limited"
token_sha256 = "{limited}"
allow = ["sandbox_sessions:read"]
rate = "1/h"
"#,
        ci = sha(CI_TOKEN),
        other = sha(OTHER_TOKEN),
        limited = sha(LIMITED_TOKEN),
    )
}

async fn start_gateway(up: &Upstream, pki: &Pki) -> TestProxy {
    start_gateway_with(up, pki, |text| text).await
}

/// The standard gateway, its config passed through `edit` first.
async fn start_gateway_with(
    up: &Upstream,
    pki: &Pki,
    edit: impl FnOnce(String) -> String,
) -> TestProxy {
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    dir.write("secret/api-key", KEY);
    dir.write("secret/billing-key", BILLING_KEY);
    dir.write("secret/ci-key", CI_KEY);
    let leaf = pki.listener_ca.leaf(&["localhost", "127.0.0.1"]).unwrap();
    dir.write("tls/tls.crt", &leaf.cert_pem);
    dir.write("tls/tls.key", &leaf.key_pem);
    dir.write("tls/clients-ca.pem", pki.clients_ca.cert_pem());
    TestProxy::start_in(dir, &edit(gateway_config(&up.mock.url()))).await
}

/// An HTTPS connection to the gateway trusting `roots`, presenting `client` if given.
/// Returns the sender and the certificate the gateway served.
async fn connect(
    addr: std::net::SocketAddr,
    roots: &[&str],
    client: Option<&Leaf>,
) -> Result<(SendRequest<Full<Bytes>>, CertificateDer<'static>), String> {
    use rustls_pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        store
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    let config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no server certificate")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok((sender, served))
}

async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.internal");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = sender
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// One request on a fresh connection.
async fn once(
    p: &TestProxy,
    pki: &Pki,
    client: Option<&Leaf>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let (mut s, _) = connect(p.addr, &[pki.listener_ca.cert_pem()], client).await?;
    call(&mut s, method, path, headers).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET path` on a fresh connection with `Authorization: Bearer <token>`.
async fn with_token(p: &TestProxy, pki: &Pki, token: &str, path: &str) -> Reply {
    let auth = bearer(token);
    once(p, pki, None, "GET", path, &[("authorization", &auth)])
        .await
        .unwrap()
}

#[tokio::test]
async fn mtls_caller_is_held_to_its_grants_and_sends_its_own_key() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = start_gateway(&up, &pki).await;
    let cert = pki
        .clients_ca
        .client("spiffe://corp/billing-dashboard")
        .unwrap();
    let r = once(&p, &pki, Some(&cert), "GET", "/v1/org/billing", &[])
        .await
        .unwrap();
    assert_ne!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_ne!(r.status, StatusCode::FORBIDDEN);
    let seen = up.mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0]
            .headers
            .get_all("authorization")
            .iter()
            .collect::<Vec<_>>(),
        [format!("Bearer {BILLING_KEY}").as_str()]
    );
    // Outside its grants: 403, nothing sent.
    let r = once(&p, &pki, Some(&cert), "GET", "/v1/sandboxes", &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "permission_denied")
    );
    assert_eq!(up.mock.requests().len(), 1);
    let m = metrics(&p).await;
    assert!(
        m.contains(r#"sidekey_requests_total{caller="billing-dashboard",api="default",permission="sandbox_sessions:read",decision="deny",status="403"} 1"#),
        "{m}"
    );
    p.stop().await;
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused_at_the_handshake() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = start_gateway(&up, &pki).await;
    let rogue = Ca::new("rogue")
        .unwrap()
        .client("spiffe://corp/billing-dashboard")
        .unwrap();
    // TLS 1.3: the client finishes first; the server's refusal arrives on the first read.
    let result = once(&p, &pki, Some(&rogue), "GET", "/v1/org/billing", &[]).await;
    assert!(result.is_err(), "a foreign client certificate was accepted");
    assert!(up.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn valid_cert_with_an_unknown_san_is_401() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = start_gateway(&up, &pki).await;
    let cert = pki.clients_ca.client("spiffe://corp/intruder").unwrap();
    let r = once(&p, &pki, Some(&cert), "GET", "/v1/org/billing", &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (401, "caller_unauthenticated")
    );
    assert!(r.headers.contains_key("www-authenticate"));
    assert!(up.mock.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn token_callers_get_their_own_key_and_the_token_is_never_forwarded() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = start_gateway(&up, &pki).await;
    let r = with_token(&p, &pki, CI_TOKEN, "/v1/sandboxes").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = with_token(&p, &pki, OTHER_TOKEN, "/v1/sandboxes").await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = up.mock.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {CI_KEY}").as_str()
    );
    // A caller without its own key sends the default [credential].
    assert_eq!(
        seen[1].headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    for rec in &seen {
        for (name, value) in &rec.headers {
            let v = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !v.contains(CI_TOKEN) && !v.contains(OTHER_TOKEN),
                "caller token forwarded in {name}"
            );
        }
    }
    // Wrong and absent tokens: 401, nothing sent.
    for headers in [vec![("authorization", "Bearer skc_wrong")], vec![]] {
        let r = once(&p, &pki, None, "GET", "/v1/sandboxes", &headers)
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (401, "caller_unauthenticated")
        );
    }
    assert_eq!(up.mock.requests().len(), 2);
    p.stop().await;
}

#[tokio::test]
async fn concurrent_callers_never_get_each_others_key() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = Arc::new(start_gateway(&up, &pki).await);
    let pki = Arc::new(pki);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (p, pki) = (p.clone(), pki.clone());
        tasks.push(tokio::spawn(async move {
            let (token, who) = if i % 2 == 0 {
                (CI_TOKEN, "ci")
            } else {
                (OTHER_TOKEN, "other")
            };
            let (mut s, _) = connect(p.addr, &[pki.listener_ca.cert_pem()], None)
                .await
                .unwrap();
            for _ in 0..5 {
                let auth = bearer(token);
                let r = call(
                    &mut s,
                    "GET",
                    "/v1/sandboxes",
                    &[("authorization", &auth), ("x-test-caller", who)],
                )
                .await
                .unwrap();
                assert_eq!(r.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = up.mock.requests();
    assert_eq!(seen.len(), 200);
    for rec in seen {
        let expected = match rec.headers["x-test-caller"].to_str().unwrap() {
            "ci" => format!("Bearer {CI_KEY}"),
            _ => format!("Bearer {KEY}"),
        };
        assert_eq!(rec.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(rec.headers["authorization"], expected.as_str());
    }
    if let Ok(p) = Arc::try_unwrap(p) {
        p.stop().await;
    }
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_with_retry_after() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = start_gateway(&up, &pki).await;
    let first = with_token(&p, &pki, LIMITED_TOKEN, "/v1/sandboxes").await;
    assert_eq!(first.status, StatusCode::OK);
    let second = with_token(&p, &pki, LIMITED_TOKEN, "/v1/sandboxes").await;
    assert_eq!(
        (second.status.as_u16(), second.code().as_str()),
        (429, "rate_limited")
    );
    let wait: u64 = second.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3000..=3600).contains(&wait), "retry-after {wait}");
    assert_eq!(up.mock.requests().len(), 1);
    // Other callers are not affected.
    let r = with_token(&p, &pki, CI_TOKEN, "/v1/sandboxes").await;
    assert_eq!(r.status, StatusCode::OK);
    p.stop().await;
}

#[tokio::test]
async fn listener_certificate_rotates_while_clients_keep_connecting() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let next_ca = Ca::new("next listener CA").unwrap();
    let p = start_gateway(&up, &pki).await;
    let roots = [pki.listener_ca.cert_pem(), next_ca.cert_pem()];
    let auth = bearer(CI_TOKEN);
    let (mut early, first_cert) = connect(p.addr, &roots, None).await.unwrap();
    assert_eq!(
        call(
            &mut early,
            "GET",
            "/v1/sandboxes",
            &[("authorization", &auth)]
        )
        .await
        .unwrap()
        .status,
        StatusCode::OK
    );

    // Clients keep connecting during the rotation; none may fail.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, roots_owned) = (p.addr, roots.map(str::to_owned));
    let flag = stop.clone();
    let load = tokio::spawn(async move {
        let roots: Vec<&str> = roots_owned.iter().map(String::as_str).collect();
        let mut n = 0;
        while !flag.load(std::sync::atomic::Ordering::Acquire) {
            let (mut s, _) = connect(addr, &roots, None).await.unwrap();
            let auth = bearer(CI_TOKEN);
            let r = call(&mut s, "GET", "/v1/sandboxes", &[("authorization", &auth)])
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK);
            n += 1;
        }
        n
    });
    let leaf = next_ca.leaf(&["localhost", "127.0.0.1"]).unwrap();
    // Key first, then certificate, each replaced by rename as a deploy tool would.
    p.dir.write("tls/tls.key.tmp", &leaf.key_pem);
    p.dir.write("tls/tls.crt.tmp", &leaf.cert_pem);
    std::fs::rename(
        p.dir.path().join("tls/tls.key.tmp"),
        p.dir.path().join("tls/tls.key"),
    )
    .unwrap();
    std::fs::rename(
        p.dir.path().join("tls/tls.crt.tmp"),
        p.dir.path().join("tls/tls.crt"),
    )
    .unwrap();
    let rotated = eventually(Duration::from_secs(5), || async {
        let (_, served) = connect(p.addr, &roots, None).await.unwrap();
        served != first_cert
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let n = load.await.unwrap();
    assert!(rotated, "the new listener certificate was never served");
    assert!(n > 0);
    // The connection made before the rotation still works.
    assert_eq!(
        call(
            &mut early,
            "GET",
            "/v1/sandboxes",
            &[("authorization", &auth)]
        )
        .await
        .unwrap()
        .status,
        StatusCode::OK
    );
    assert!(
        metrics(&p)
            .await
            .contains(r#"sidekey_tls_reloads_total{result="ok"}"#)
    );
    p.stop().await;
}

#[tokio::test]
async fn token_new_output_round_trips_through_the_config() {
    let (code, out, _) = sidekey(&["token", "new", "--caller", "ci-e2e"]);
    assert_eq!(code, 0);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = \"")))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap()
            .to_owned()
    };
    let (token, hash) = (field("token"), field("token_sha256"));
    assert_eq!(hash, sha(&token));
    let up = Upstream::banata().await;
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    dir.write("secret/api-key", KEY);
    // The printed block pasted as it is, under a plain loopback listener.
    let block = out
        .split("# paste into the gateway config:\n")
        .nth(1)
        .unwrap();
    let text = format!(
        "{}\n{block}\nallow = [\"sandbox_sessions:read\"]\n",
        config_text(&up.mock.url(), "")
            .split("[service]")
            .next()
            .unwrap()
    ) + "\n[permissions]\n\"sandbox_sessions:read\" = [\"GET /v1/sandboxes\"]\n";
    let p = TestProxy::start_in(dir, &text).await;
    let auth = bearer(&token);
    let r = request(p.addr, "GET", "/v1/sandboxes", &[("authorization", &auth)]).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(r.status.as_u16(), 401);
    p.stop().await;
}

#[tokio::test]
async fn check_refuses_ambiguous_or_unsafe_gateway_configs() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = start_gateway(&up, &pki).await;
    let base = gateway_config(&up.mock.url());
    let cases = [
        (
            base.replace("[credential]", "[service]\nname = \"x\"\nallow = [\"org:billing\"]\n\n[credential]"),
            "not both",
        ),
        (
            base.replace("[listener.tls]\ncert_file = \"tls/tls.crt\"\nkey_file = \"tls/tls.key\"\nclient_ca_file = \"tls/clients-ca.pem\"\n", "")
                .replacen("address = \"127.0.0.1:0\"", "address = \"0.0.0.0:0\"", 1),
            "loopback",
        ),
        (
            base.replace(&sha(OTHER_TOKEN), &sha(CI_TOKEN)),
            "same identity",
        ),
        (
            base.replace("secret/ci-key", "secret/ci-key-typo"),
            "does not exist",
        ),
    ];
    for (text, expected) in cases {
        let path = p.dir.write("bad.toml", &text);
        let (code, out, err) = sidekey(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{expected}: {out}{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let good = p.dir.write("good.toml", &base);
    let (code, out, _) = sidekey(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("caller billing-dashboard (client_cert_san spiffe://corp/billing-dashboard)"),
        "{out}"
    );
    let (code, out, _) = sidekey(&[
        "explain",
        "--config",
        good.to_str().unwrap(),
        "--caller",
        "billing-dashboard",
        "GET",
        "/v1/sandboxes",
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("which caller `billing-dashboard` is not granted"),
        "{out}"
    );
    let (code, _, err) = sidekey(&[
        "explain",
        "--config",
        good.to_str().unwrap(),
        "GET",
        "/v1/sandboxes",
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("--caller"), "{err}");
    p.stop().await;
}

#[tokio::test]
async fn caller_keys_rotate_and_credential_lists_every_key() {
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = start_gateway(&up, &pki).await;
    let admin = |path: &'static str| {
        let addr = p.admin;
        async move { get(addr, path).await.json() }
    };
    let listed = admin("/credential").await;
    let names: Vec<&str> = listed["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "billing-dashboard", "ci-e2e"]);
    let fp = |key: &str| sidekey::credential::fingerprint(key.as_bytes());
    assert_eq!(listed["credentials"][2]["fingerprint"], fp(CI_KEY).as_str());
    assert_eq!(listed["credentials"][2]["used_by"][0], "ci-e2e");
    assert!(!listed.to_string().contains(CI_KEY));

    // Rotate only the CI caller's key, by rename as kubelet-like tools do.
    let next = "sk_test_CI_key_rotated_000000003";
    p.dir.write("secret/ci-key.new", next);
    std::fs::rename(
        p.dir.path().join("secret/ci-key.new"),
        p.dir.path().join("secret/ci-key"),
    )
    .unwrap();
    let rotated = eventually(Duration::from_secs(5), || async {
        let r = with_token(&p, &pki, CI_TOKEN, "/v1/sandboxes").await;
        r.status == StatusCode::OK
            && up.mock.requests().last().is_some_and(|rec| {
                rec.headers["authorization"] == format!("Bearer {next}").as_str()
            })
    })
    .await;
    assert!(rotated, "the caller's new key never reached the upstream");
    let listed = admin("/credential").await;
    assert_eq!(listed["credentials"][2]["fingerprint"], fp(next).as_str());
    // The other callers' keys did not move.
    assert_eq!(listed["credentials"][0]["fingerprint"], fp(KEY).as_str());
    assert_eq!(
        listed["credentials"][1]["fingerprint"],
        fp(BILLING_KEY).as_str()
    );
    let m = metrics(&p).await;
    assert!(
        m.contains(&format!(
            "sidekey_credential_info{{api=\"default\",credential=\"ci-e2e\",fingerprint=\"{}\"}} 1",
            fp(next)
        )),
        "{m}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_silent_tls_client_is_dropped_and_others_are_served_meanwhile() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::banata().await;
    let pki = Pki::new();
    let p = start_gateway_with(&up, &pki, |text| {
        text.replacen(
            "address = \"127.0.0.1:0\"",
            "address = \"127.0.0.1:0\"\nheader_read_timeout = \"300ms\"",
            1,
        )
    })
    .await;
    // Connects and never sends a ClientHello.
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    // Meanwhile a real caller is served at once.
    let r = with_token(&p, &pki, CI_TOKEN, "/v1/sandboxes").await;
    assert_eq!(r.status, StatusCode::OK);
    // The silent one is closed after the header-read timeout, not held forever.
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent TLS connection was not closed: {closed:?}"
    );
    p.stop().await;
}
