//! Several APIs behind one sidekey: routing by path prefix (segment-wise, on the canonical
//! path) and by an API's own listener, each API held to its own catalogue and sent only its
//! own key, at its own origin. Three TLS mocks record every request they receive.

use std::sync::Arc;
use std::time::Duration;

use sidekey::mock::MockUpstream;
use sidekey::pki::Ca;

use crate::support::*;

const BANATA_KEY: &str = "sk_banata_0001";
const OPENAI_KEY: &str = "sk-openai-0002";
const ANTHROPIC_KEY: &str = "sk-ant-0003";

/// Answers 200 with a `Link` and a `Location` on its own origin (and one elsewhere).
fn linking(origin: Arc<std::sync::OnceLock<String>>) -> sidekey::mock::Handler {
    Arc::new(move |req| {
        let origin = origin.get().cloned().unwrap_or_default();
        Box::pin(async move {
            let mut resp = sidekey::mock::json(
                http::StatusCode::OK,
                &serde_json::json!({"path": req.uri().path()}),
            );
            let link = format!(
                "<{origin}/repos/o/r/issues?page=2>; rel=\"next\", <https://elsewhere.example/x>; rel=\"help\""
            );
            resp.headers_mut().insert("link", link.parse().unwrap());
            resp.headers_mut()
                .insert("location", format!("{origin}/moved").parse().unwrap());
            resp
        })
    })
}

struct Three {
    ca: Ca,
    banata: MockUpstream,
    openai: MockUpstream,
    anthropic: MockUpstream,
}

async fn three() -> Three {
    let ca = Ca::new("test CA").unwrap();
    let banata = MockUpstream::start_banata(&ca).await.unwrap();
    let cell = Arc::new(std::sync::OnceLock::new());
    let openai = MockUpstream::start(&ca, linking(cell.clone()))
        .await
        .unwrap();
    let _ = cell.set(openai.url());
    let anthropic = MockUpstream::start(&ca, linking(Arc::new(std::sync::OnceLock::new())))
        .await
        .unwrap();
    Three {
        ca,
        banata,
        openai,
        anthropic,
    }
}

fn config(t: &Three) -> String {
    format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"

[api.banata]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/"
credential = {{ file = "keys/banata" }}
[api.banata.permissions]
"sandbox_sessions:read" = ["GET /v1/sandboxes", "GET /v1/sandboxes/{{id}}"]
"sandbox_sessions:delete" = ["DELETE /v1/sandboxes/{{id}}"]

[api.openai]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/openai"
credential = {{ file = "keys/openai" }}
[api.openai.permissions]
"models:read" = ["GET /v1/models", "GET /v1/models/{{id}}"]
"issues:read" = ["GET /repos/{{o}}/{{r}}/issues"]

[api.anthropic]
url = "{}"
ca_file = "ca.pem"
listen = "127.0.0.1:0"
credential = {{ file = "keys/anthropic", header = "x-api-key", prefix = "" }}
[api.anthropic.permissions]
"messages" = ["POST /v1/messages"]

[service]
name = "orders-api"
allow = ["banata/sandbox_sessions:read", "openai/models:read", "openai/issues:read", "anthropic/messages"]

[runtime]
shutdown_idle = "50ms"
[reload]
interval = "30s"
debounce = "50ms"
"#,
        t.banata.url(),
        t.openai.url(),
        t.anthropic.url()
    )
}

async fn start(t: &Three) -> TestProxy {
    let dir = TempDir::new();
    dir.write("ca.pem", t.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    dir.write("keys/banata", BANATA_KEY);
    dir.write("keys/openai", OPENAI_KEY);
    dir.write("keys/anthropic", ANTHROPIC_KEY);
    TestProxy::start_in(dir, &config(t)).await
}

/// Every request a mock saw carries exactly its own key, in its own header, and no other.
fn only_own_key(mock: &MockUpstream, header: &str, value: &str) {
    for r in mock.requests() {
        let all: Vec<String> = r
            .headers
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        assert_eq!(r.headers.get_all(header).iter().count(), 1, "{r:?}");
        assert_eq!(r.headers[header], value, "{r:?}");
        for other in [BANATA_KEY, OPENAI_KEY, ANTHROPIC_KEY] {
            if !value.contains(other) {
                assert!(
                    all.iter().all(|v| !v.contains(other)),
                    "foreign key in {r:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn each_api_gets_its_own_requests_and_key() {
    let t = three().await;
    let p = start(&t).await;
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    let r = get(p.addr, "/openai/v1/models").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/v1/models");
    let own = p.apis.iter().find(|(n, _)| n == "anthropic").unwrap().1;
    let r = request(own, "POST", "/v1/messages", &[("x-api-key", "caller-junk")]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Denials are per API: openai's catalogue has no sandboxes, banata's grant lacks delete,
    // and the anthropic listener reaches anthropic only.
    assert_eq!(
        get(p.addr, "/openai/v1/sandboxes").await.code(),
        "route_not_allowed"
    );
    let r = request(p.addr, "DELETE", "/v1/sandboxes/sb_1", &[]).await;
    assert_eq!(r.code(), "permission_denied");
    assert_eq!(get(own, "/v1/sandboxes").await.code(), "route_not_allowed");
    assert_eq!(t.banata.requests().len(), 1);
    assert_eq!(t.openai.requests().len(), 1);
    assert_eq!(t.openai.requests()[0].target, "/v1/models");
    assert_eq!(t.anthropic.requests().len(), 1);
    only_own_key(&t.banata, "authorization", &format!("Bearer {BANATA_KEY}"));
    only_own_key(&t.openai, "authorization", &format!("Bearer {OPENAI_KEY}"));
    only_own_key(&t.anthropic, "x-api-key", ANTHROPIC_KEY);
    p.stop().await;
}

#[tokio::test]
async fn no_path_header_or_target_moves_a_key_to_another_origin() {
    let t = three().await;
    let p = start(&t).await;
    let hostile = [
        "/openai/../v1/sandboxes",
        "/openai/%2e%2e/v1/sandboxes",
        "/openai%2F..%2Fv1/sandboxes",
        "/openai%2fv1/models",
        "/openaix/v1/models",
        "/OPENAI/v1/models",
        "/openai/v1/../../v1/sandboxes",
        "//openai/v1/models",
        "/./openai/v1/models",
        "/openai;/v1/models",
        "/openai\\v1/models",
    ];
    for path in hostile {
        let r = get(p.addr, path).await;
        assert!(
            matches!(r.status.as_u16(), 400 | 403 | 404),
            "{path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    // Routing never reads Host, X-Forwarded-Host or an absolute-form target.
    let r = request(
        p.addr,
        "GET",
        "/v1/sandboxes",
        &[
            ("x-forwarded-host", "api.openai.com"),
            ("forwarded", "host=api.openai.com"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let out = raw(
        p.addr,
        format!(
            "GET {}/v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n",
            t.openai.url()
        )
        .as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Generated paths: every one that reached a mock reached the right one with its key.
    let segments = [
        "openai",
        "v1",
        "models",
        "sandboxes",
        "..",
        "%2e",
        "%2F",
        "sb_1",
        "",
        "OpenAI",
    ];
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..150 {
        let mut path = String::new();
        for _ in 0..(1 + seed % 4) {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            path.push('/');
            path.push_str(segments[(seed >> 16) as usize % segments.len()]);
        }
        let _ = get(p.addr, &path).await;
    }
    only_own_key(&t.banata, "authorization", &format!("Bearer {BANATA_KEY}"));
    only_own_key(&t.openai, "authorization", &format!("Bearer {OPENAI_KEY}"));
    assert!(t.anthropic.requests().is_empty());
    for r in t.openai.requests() {
        assert!(r.target.starts_with("/v1/models"), "{r:?}");
    }
    for r in t.banata.requests() {
        assert!(r.target.starts_with("/v1/sandboxes"), "{r:?}");
    }
    p.stop().await;
}

#[tokio::test]
async fn links_on_the_api_origin_come_back_through_sidekey() {
    let t = three().await;
    let p = start(&t).await;
    let out = raw(
        p.addr,
        b"GET /openai/repos/o/r/issues HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        out.contains("link: <http://127.0.0.1:8080/openai/repos/o/r/issues?page=2>; rel=\"next\", <https://elsewhere.example/x>; rel=\"help\""),
        "{out}"
    );
    assert!(
        out.contains("location: http://127.0.0.1:8080/openai/moved"),
        "{out}"
    );
    p.stop().await;
}

#[tokio::test]
async fn explain_and_check_name_the_api() {
    let t = three().await;
    let dir = TempDir::new();
    dir.write("ca.pem", t.ca.cert_pem());
    let path = dir.write("sidekey.toml", &config(&t));
    let path = path.to_str().unwrap();
    let (code, out, _) = sidekey(&["explain", "--config", path, "GET", "/openai/v1/models"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("api: openai"), "{out}");
    assert!(out.contains("permission: openai/models:read"), "{out}");
    assert!(out.contains("/v1/models"), "{out}");
    let (code, out, _) = sidekey(&["explain", "--config", path, "GET", "/nowhere/x"]);
    assert_eq!(code, 1, "{out}");
    let (code, out, err) = sidekey(&["check", "--config", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("api openai at /openai -> "), "{out}");
    assert!(
        out.contains("api anthropic at listener 127.0.0.1:0"),
        "{out}"
    );
    assert!(out.contains("openai/models:read"), "{out}");
}

#[tokio::test]
async fn mixed_or_ambiguous_api_configs_are_refused() {
    let t = three().await;
    let base = config(&t);
    let cases = [
        (
            base.replace(
                "[service]",
                "[upstream]\nurl = \"https://x.example\"\n[service]",
            ),
            "cannot be mixed",
        ),
        (
            base.replace("path_prefix = \"/openai\"", "path_prefix = \"/\""),
            "at most one API may take",
        ),
        (
            base.replace("\"openai/models:read\"", "\"models:read\""),
            "qualify a permission",
        ),
        (
            base.replace("\"openai/models:read\"", "\"github/models:read\""),
            "there is no [api.github]",
        ),
        (
            base.replace("path_prefix = \"/openai\"", "path_prefix = \"/openai/\""),
            "not a path prefix",
        ),
        (
            base.replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\""),
            "loopback",
        ),
    ];
    for (text, want) in cases {
        let dir = TempDir::new();
        dir.write("ca.pem", t.ca.cert_pem());
        let path = dir.write("sidekey.toml", &text);
        let (code, _, err) = sidekey(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{want}: {err}");
        assert!(err.contains(want), "want {want:?}: {err}");
    }
}
