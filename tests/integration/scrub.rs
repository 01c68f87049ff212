//! An upstream that echoes the key (a debugging header, a base64 copy, a redirect carrying it
//! percent-encoded) never hands it back to the app: each form is replaced by `*` of the same
//! length, counted in `sidekey_key_echoes_total`; with `scrub = "off"` it passes (the test
//! can fail).

use std::sync::Arc;

use base64::Engine;
use sidekey::mock::MockUpstream;
use sidekey::pki::Ca;

use crate::support::*;

const KEY: &str = "sk_echo+me/0123456789";

async fn start(scrub: &str) -> (TestProxy, MockUpstream) {
    let ca = Ca::new("test CA").unwrap();
    let handler: sidekey::mock::Handler = Arc::new(|_req| {
        Box::pin(async move {
            let mut resp = sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({}));
            let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(KEY);
            let pct: String =
                percent_encoding::utf8_percent_encode(KEY, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            let h = resp.headers_mut();
            h.insert("x-debug-key", format!("your key is {KEY}").parse().unwrap());
            h.insert("x-debug-b64", format!("{b64}==").parse().unwrap());
            h.insert(
                "location",
                format!("https://elsewhere.example/next?key={pct}")
                    .parse()
                    .unwrap(),
            );
            resp
        })
    });
    let mock = MockUpstream::start(&ca, handler).await.unwrap();
    let dir = TempDir::new();
    dir.write("ca.pem", ca.cert_pem());
    dir.write("key", KEY);
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[api.echo]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/"
{scrub}
credential = {{ scheme = "query", param = "key", file = "key" }}
[api.echo.permissions]
"read" = ["GET /v1/x"]
[service]
name = "scrub-test"
allow = ["echo/read"]
"#,
        mock.url()
    );
    (TestProxy::start_in(dir, &config).await, mock)
}

#[tokio::test]
async fn an_echoed_key_is_taken_out_of_response_headers() {
    let (p, _mock) = start("").await;
    let r = get(p.addr, "/v1/x").await;
    assert_eq!(r.status, 200);
    let all: String = r
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(KEY);
    assert!(
        !all.contains(KEY) && !all.contains(&b64) && !all.contains("0123456789"),
        "{all}"
    );
    assert_eq!(
        r.headers["x-debug-key"],
        format!("your key is {}", "*".repeat(KEY.len()))
    );
    assert_eq!(
        r.headers["x-debug-b64"],
        format!("{}==", "*".repeat(b64.len()))
    );
    let m = metrics(&p).await;
    assert!(
        m.lines().any(|l| l.starts_with("sidekey_key_echoes_total")
            && l.contains("where=\"header\"")
            && l.ends_with(" 3")),
        "{m}"
    );
    p.stop().await;

    // Switched off, the echo passes: what the scrub takes out is really there.
    let (p, _mock) = start("scrub = \"off\"").await;
    let r = get(p.addr, "/v1/x").await;
    assert_eq!(r.headers["x-debug-key"], format!("your key is {KEY}"));
    p.stop().await;
}
