//! The forward proxy: CONNECT to a configured API is intercepted with a leaf from the
//! interception CA (made by `ca::init`, as `sidekey ca init` does), the inner requests run
//! through that API's allow-list with its key injected, and everything else is refused.
//! The API is named under `.test` and reached with `connect_to` (its TLS is verified for
//! that name); clients are real rustls/hyper clients over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sidekey::mock::MockUpstream;
use sidekey::pki::Ca;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

const KEY: &str = "sk_forward_0001";
const HOST: &str = "api.banata.test";

struct Setup {
    p: TestProxy,
    mock: MockUpstream,
    /// The interception CA's certificate (what clients trust).
    ca_pem: String,
}

async fn setup(forward_extra: &str) -> Setup {
    setup_with(
        forward_extra,
        "[service]\nname = \"forward-test\"\nallow = [\"banata/sandbox_sessions:read\"]\n",
    )
    .await
}

async fn setup_with(forward_extra: &str, who: &str) -> Setup {
    setup_credential(forward_extra, who, "{ file = \"secret/api-key\" }").await
}

/// `credential`: the API's credential table (inline).
async fn setup_credential(forward_extra: &str, who: &str, credential: &str) -> Setup {
    let upstream_ca = Ca::new("upstream CA").unwrap();
    let leaf = upstream_ca.leaf(&[HOST]).unwrap();
    let handler: sidekey::mock::Handler = Arc::new(|req| {
        Box::pin(async move {
            sidekey::mock::json(
                StatusCode::OK,
                &serde_json::json!({"path": req.uri().path()}),
            )
        })
    });
    let mock = MockUpstream::start_with_leaf(upstream_ca.cert_pem().to_owned(), leaf, handler)
        .await
        .unwrap();
    let dir = TempDir::new();
    dir.write("ca.pem", upstream_ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    dir.write("secret/api-key", KEY);
    let made = sidekey::control::ca::init(
        &dir.path().join("ca"),
        &[HOST.to_owned()],
        Duration::from_secs(3600),
    )
    .unwrap();
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[runtime]
shutdown_idle = "10ms"
shutdown_grace = "1s"

[forward_proxy]
address = "127.0.0.1:0"
ca_cert_file = "ca/ca.crt"
ca_key_file = "ca/ca.key"
{forward_extra}

[api.banata]
url = "https://{HOST}"
connect_to = "{addr}"
ca_file = "ca.pem"
path_prefix = "/banata"
credential = {credential}

[api.banata.permissions]
"sandbox_sessions:read" = ["GET /v1/sandboxes", "GET /v1/sandboxes/{{id}}"]
"sandbox_sessions:delete" = ["DELETE /v1/sandboxes/{{id}}"]

{who}
"#,
        addr = mock.addr(),
    );
    let p = TestProxy::start_in(dir, &config).await;
    Setup {
        p,
        mock,
        ca_pem: made.cert_pem().to_owned(),
    }
}

/// Sends `CONNECT authority` and returns the stream and the response head.
async fn connect(proxy: SocketAddr, authority: &str) -> (TcpStream, String) {
    connect_with(proxy, authority, "").await
}

async fn connect_with(proxy: SocketAddr, authority: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        // An error: read its body too.
        let mut rest = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(500), s.read(&mut rest))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        return (s, text + &String::from_utf8_lossy(&rest[..n]));
    }
    (s, text)
}

fn tls_client(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// One HTTP/1.1 request inside an intercepted tunnel.
async fn inside(
    s: &Setup,
    sni: &str,
    host_header: &str,
    method: &str,
    path: &str,
) -> Result<Reply, String> {
    let (tcp, head) = connect(s.p.forward.unwrap(), &format!("{HOST}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let tls = tls_client(&s.ca_pem, &[b"http/1.1"])
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host_header)
        .header("authorization", "Bearer caller-supplied")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

#[tokio::test]
async fn an_intercepted_call_gets_the_key_and_the_allow_list() {
    let s = setup("").await;
    let r = inside(&s, HOST, HOST, "GET", "/v1/sandboxes")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = s.mock.requests();
    assert_eq!(seen.len(), 1);
    let auth: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(auth, vec![format!("Bearer {KEY}").as_str()]);
    assert!(seen[0].headers.get("proxy-authorization").is_none());
    assert_eq!(seen[0].target, "/v1/sandboxes");

    // Not granted: refused inside the tunnel, nothing sent.
    let r = inside(&s, HOST, HOST, "DELETE", "/v1/sandboxes/sb_1")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "permission_denied");
    // Another Host inside the tunnel: 421, nothing sent.
    let r = inside(&s, HOST, "evil.test", "GET", "/v1/sandboxes")
        .await
        .unwrap();
    assert_eq!(r.status, 421);
    assert_eq!(r.code(), "authority_mismatch");
    // An ambiguous path inside the tunnel: 400, as on the reverse listener.
    let r = inside(&s, HOST, HOST, "GET", "/v1/sandboxes/%2e%2e/x")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        s.mock.requests().len(),
        1,
        "nothing more reached the upstream"
    );
    let text = metrics(&s.p).await;
    assert!(!text.contains(KEY));
    s.p.stop().await;
}

/// The forward proxy applies the API's scheme as the reverse listener does: an unmodified
/// client sends a placeholder where a `path` key goes; it is dropped, the rest is checked,
/// and the real key is put in front of exactly that path.
#[tokio::test]
async fn an_intercepted_call_gets_a_path_key_in_place_of_the_placeholder() {
    let s = setup_credential(
        "",
        "[service]\nname = \"forward-test\"\nallow = [\"banata/sandbox_sessions:read\"]\n",
        "{ scheme = \"path\", template = \"/bot{key}\", file = \"secret/api-key\" }",
    )
    .await;
    let r = inside(&s, HOST, HOST, "GET", "/botPLACEHOLDER/v1/sandboxes")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Ungranted behind the placeholder: refused, nothing sent.
    let r = inside(
        &s,
        HOST,
        HOST,
        "DELETE",
        "/botPLACEHOLDER/v1/sandboxes/sb_1",
    )
    .await
    .unwrap();
    assert_eq!(r.code(), "permission_denied");
    let seen = s.mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, format!("/bot{KEY}/v1/sandboxes"));
    // The caller's Authorization is a caller credential under every scheme.
    assert!(seen[0].headers.get("authorization").is_none());
    s.p.stop().await;
}

/// A client that lists AES-256-GCM-SHA384 first (OpenSSL's order) still gets
/// AES-128-GCM-SHA256: a new tunnel's handshake hashes with SHA-256 (accelerated), not
/// SHA-384. TLS 1.3 and 1.2 alike.
#[tokio::test]
async fn the_tunnel_handshake_picks_sidekeys_suite_order() {
    use rustls::CipherSuite as C;
    let s = setup("").await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(s.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    for (versions, expected) in [
        (&rustls::version::TLS13, C::TLS13_AES_128_GCM_SHA256),
        (
            &rustls::version::TLS12,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ] {
        let mut provider = rustls::crypto::ring::default_provider();
        // AES-256 first, as OpenSSL lists them.
        provider
            .cipher_suites
            .sort_by_key(|c| !format!("{:?}", c.suite()).contains("AES_256"));
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[versions])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let (tcp, head) = connect(s.p.forward.unwrap(), &format!("{HOST}:443")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();
        let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, expected);
    }
    s.p.stop().await;
}

#[tokio::test]
async fn sni_must_be_the_connect_host() {
    let s = setup("trust_dir = \"trust\"").await;
    // The trust files for the app were written before the proxy served.
    let trust = s.p.dir.path().join("trust");
    assert_eq!(
        std::fs::read_to_string(trust.join("ca.crt")).unwrap(),
        s.ca_pem
    );
    assert!(
        std::fs::read_to_string(trust.join("bundle.pem"))
            .unwrap()
            .ends_with(&s.ca_pem)
    );
    let (tcp, head) = connect(s.p.forward.unwrap(), &format!("{HOST}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    // The client trusts the CA and asks for another name: the handshake is refused.
    let r = tls_client(&s.ca_pem, &[b"http/1.1"])
        .connect(ServerName::try_from("other.banata.test").unwrap(), tcp)
        .await;
    assert!(r.is_err(), "handshake must fail");
    assert!(s.mock.requests().is_empty());
    s.p.stop().await;
}

#[tokio::test]
async fn other_hosts_are_refused_on_the_connect() {
    let s = setup("").await;
    let fwd = s.p.forward.unwrap();
    for (authority, reason) in [
        ("evil.test:443", "host_not_configured"),
        ("127.0.0.1:443", "ip_literal"),
        ("[::1]:443", "ip_literal"),
        ("api.banata.test:8443", "port_not_allowed"),
    ] {
        let (_, head) = connect(fwd, authority).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{authority}: {head}");
        assert!(head.contains("\"host_not_allowed\""), "{head}");
        assert!(head.contains(reason), "{authority}: {head}");
    }
    // Absolute-form to another host: 403 too; an origin-form request is no proxy request.
    let out = raw(
        fwd,
        b"GET http://evil.test/x HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let out = raw(
        fwd,
        b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(s.mock.requests().is_empty());
    s.p.stop().await;
}

#[tokio::test]
async fn absolute_form_is_served_with_tls_origination() {
    let s = setup("").await;
    let out = raw(
        s.p.forward.unwrap(),
        format!("GET http://{HOST}/v1/sandboxes/sb_1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer caller\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = s.mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {KEY}"));
    s.p.stop().await;
}

#[tokio::test]
async fn http2_inside_the_tunnel() {
    let s = setup("").await;
    let (tcp, _) = connect(s.p.forward.unwrap(), &format!("{HOST}:443")).await;
    let tls = tls_client(&s.ca_pem, &[b"h2", b"http/1.1"])
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for path in ["/v1/sandboxes", "/v1/sandboxes/sb_2"] {
        let req = Request::builder()
            .uri(format!("https://{HOST}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // :authority of another host on the same connection: 421.
    let req = Request::builder()
        .uri("https://evil.test/v1/sandboxes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), 421);
    assert_eq!(s.mock.requests().len(), 2);
    s.p.stop().await;
}

#[tokio::test]
async fn listed_hosts_are_tunnelled_blind_without_a_key() {
    // A plain TCP echo on loopback stands in for a package index.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let s = setup(&format!(
        "unknown_hosts = \"tunnel\"\ntunnel = [\"localhost:{port}\"]"
    ))
    .await;
    let (mut tcp, head) = connect(s.p.forward.unwrap(), &format!("localhost:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // Unlisted ports of the same host are not.
    let (_, head) = connect(
        s.p.forward.unwrap(),
        &format!("localhost:{}", port.wrapping_add(1)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    s.p.stop().await;
}

#[tokio::test]
async fn a_readable_ca_key_is_refused() {
    let s = setup("").await;
    let dir = &s.p.dir;
    let key = dir.path().join("ca/ca.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = sidekey::config::Config::load(&dir.path().join("sidekey.toml")).unwrap();
    let err = match sidekey::App::bind(config).await {
        Ok(_) => panic!("a world-readable CA key must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("readable by group or others"), "{err}");
    s.p.stop().await;
}

/// Gateway shape: callers identify with their token in Proxy-Authorization (Bearer, or
/// Basic with the token as the password); without it, 407 with Proxy-Authenticate. The
/// token never reaches the upstream.
#[tokio::test]
async fn gateway_callers_identify_with_proxy_authorization() {
    let token = "skc_forward-gateway-token-0001";
    let who = format!(
        "[[caller]]\nname = \"agent\"\ntoken_sha256 = \"{}\"\nallow = [\"banata/sandbox_sessions:read\"]\n",
        sidekey::proxy::caller::token_sha256(token)
    );
    let s = setup_with("", &who).await;
    let fwd = s.p.forward.unwrap();
    let (_, head) = connect(fwd, &format!("{HOST}:443")).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"sidekey\""),
        "{head}"
    );
    assert!(head.contains("\"proxy_auth_required\""), "{head}");
    let (_, head) = connect_with(
        fwd,
        &format!("{HOST}:443"),
        "Proxy-Authorization: Bearer skc_wrong\r\n",
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 407") && head.contains("unknown_token"),
        "{head}"
    );

    let bearer = format!("Proxy-Authorization: Bearer {token}\r\n");
    let (tcp, head) = connect_with(fwd, &format!("{HOST}:443"), &bearer).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let tls = tls_client(&s.ca_pem, &[b"http/1.1"])
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    // The app inside the tunnel sends its own (placeholder) Authorization: not a caller token.
    let req = Request::builder()
        .uri("/v1/sandboxes")
        .header("host", HOST)
        .header("authorization", "Bearer sidekey-placeholder-not-a-key")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), 200);

    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("agent:{token}"));
    let out = raw(
        fwd,
        format!("GET http://{HOST}/v1/sandboxes/sb_1 HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {basic}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = s.mock.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.headers["authorization"], format!("Bearer {KEY}"));
        assert!(r.headers.get("proxy-authorization").is_none());
        let all: String = r
            .headers
            .values()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        assert!(!all.contains(token) && !all.contains(&basic), "{all}");
    }
    s.p.stop().await;
}

/// Inside the tunnel, the reverse listener's rules hold: an `Upgrade: h2c` is stripped and
/// never forwarded, and a request smuggled behind a two-way framed one (Content-Length with
/// Transfer-Encoding) never reaches the upstream.
#[tokio::test]
async fn smuggling_and_h2c_inside_the_tunnel() {
    let s = setup("").await;
    let (tcp, head) = connect(s.p.forward.unwrap(), &format!("{HOST}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    let mut tls = tls_client(&s.ca_pem, &[b"http/1.1"])
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(format!("GET /v1/sandboxes HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    tls.write_all(format!("GET /v1/sandboxes HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/admin HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut rest)).await;
    let out = String::from_utf8_lossy(&rest).into_owned();
    // As on the reverse listener: hyper frames CL + TE by chunked and closes after the
    // response, so the request hidden behind it is never read.
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "one response: {out}");
    let seen = s.mock.requests();
    assert!(seen.iter().all(|r| !r.target.contains("admin")), "{seen:?}");
    assert!(
        seen.iter().all(
            |r| r.headers.get("upgrade").is_none() && r.headers.get("http2-settings").is_none()
        )
    );
    assert!(
        seen.iter()
            .all(|r| r.headers.get("content-length").is_none_or(|v| v == "0")),
        "{seen:?}"
    );
    s.p.stop().await;
}

/// OpenSSL's own client through the proxy: the right name completes the handshake against
/// the interception CA; another SNI gets an alert and no certificate.
#[tokio::test]
async fn openssl_s_client_sees_the_leaf_and_the_sni_refusal() {
    let s = setup("").await;
    let fwd = s.p.forward.unwrap().to_string();
    let ca = s.p.dir.path().join("ca/ca.crt");
    let run = |sni: &'static str| {
        let (fwd, ca) = (fwd.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-proxy",
                    &fwd,
                    "-connect",
                    &format!("{HOST}:443"),
                    "-servername",
                    sni,
                    "-CAfile",
                    ca.to_str().unwrap(),
                    "-verify_return_error",
                    "-brief",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
    };
    let (ok, text) = run(HOST).await.unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("Verification: OK"), "{text}");
    let (ok, text) = run("other.banata.test").await.unwrap();
    assert!(!ok, "{text}");
    assert!(text.to_ascii_lowercase().contains("alert"), "{text}");
    s.p.stop().await;
}
