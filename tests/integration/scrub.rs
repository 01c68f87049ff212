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
    let (dir, config, mock) = echoing(scrub).await;
    (TestProxy::start_in(dir, &config).await, mock)
}

/// A mock that echoes the key in three response headers, and a config for it.
async fn echoing(scrub: &str) -> (TempDir, String, MockUpstream) {
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
    (dir, config, mock)
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

/// A body sent in the chunks given, `gap` apart (so they reach sidekey as separate reads).
struct Chunked(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// An upstream that echoes the key on every response is an incident, but a warning per
/// response would flood the log (and cost a write on every request): the first echo is
/// logged at once, then at most one line per 10 s; the metric counts every echo.
#[tokio::test]
async fn a_key_echoed_on_every_response_is_logged_once_and_counted_each_time() {
    let (dir, config, _mock) = echoing("").await;
    dir.write("sidekey.toml", &config);
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let run = Running::start(
        &dir.path().join("sidekey.toml"),
        "info",
        &dir.path().join("logs"),
    )
    .await;
    for _ in 0..20 {
        let r = get(run.proxy, "/v1/x").await;
        assert_eq!(
            r.headers["x-debug-key"],
            format!("your key is {}", "*".repeat(KEY.len()))
        );
    }
    let m = String::from_utf8_lossy(&get(run.admin, "/metrics").await.body).into_owned();
    assert!(
        m.lines().any(|l| l.starts_with("sidekey_key_echoes_total")
            && l.contains("where=\"header\"")
            && l.ends_with(" 60")),
        "{m}"
    );
    let stdout = run.stdout.clone();
    assert_eq!(run.stop().await, Some(0));
    let log = std::fs::read_to_string(stdout).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("echoed the credential in a response header"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("\"unlogged\":0"), "{}", warnings[0]);
    drop(dir);
}

fn respond_with(
    ct: &str,
    encoding: Option<&str>,
    chunks: Vec<String>,
) -> http::Response<sidekey::mock::MockBody> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(bytes::Bytes::from(c)).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let mut resp = sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({}));
    *resp.body_mut() = http_body_util::BodyExt::boxed(Chunked(rx));
    resp.headers_mut()
        .insert("content-type", ct.parse().unwrap());
    if let Some(e) = encoding {
        resp.headers_mut()
            .insert("content-encoding", e.parse().unwrap());
    }
    resp
}

#[tokio::test]
async fn with_bodies_an_echoed_key_is_taken_out_of_streamed_text_bodies() {
    let ca = Ca::new("test CA").unwrap();
    let asked_identity = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let asked = asked_identity.clone();
    let handler: sidekey::mock::Handler = Arc::new(move |req| {
        if req
            .headers()
            .get("accept-encoding")
            .is_some_and(|v| v == "identity")
        {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(KEY);
            let pct =
                percent_encoding::utf8_percent_encode(KEY, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            let (head, tail) = KEY.split_at(7);
            match path.as_str() {
                "/v1/json" => respond_with(
                    "application/json",
                    None,
                    vec![format!(
                        "{{\"error\":\"Invalid API key: {KEY}\",\"b64\":\"{b64}\",\"pct\":\"{pct}\"}}"
                    )],
                ),
                // The key crosses chunk boundaries inside an SSE stream.
                "/v1/sse" => respond_with(
                    "text/event-stream",
                    None,
                    vec![
                        "data: {\"delta\":\"hi\"}\n\n".into(),
                        format!("data: {{\"echo\":\"{head}"),
                        format!("{tail}\"}}\n\n"),
                        "data: [DONE]\n\n".into(),
                    ],
                ),
                "/v1/gzip" => respond_with(
                    "application/json",
                    Some("gzip"),
                    vec![format!("not really gzip {KEY}")],
                ),
                _ => respond_with(
                    "application/octet-stream",
                    None,
                    vec![format!("binary {KEY}")],
                ),
            }
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
scrub = "bodies"
credential = {{ file = "key" }}
[api.echo.permissions]
"read" = ["GET /v1/{{what}}"]
[service]
name = "scrub-test"
allow = ["echo/read"]
[runtime]
shutdown_idle = "50ms"
"#,
        mock.url()
    );
    let p = TestProxy::start_in(dir, &config).await;
    let stars = "*".repeat(KEY.len());

    let r = get(p.addr, "/v1/json").await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !body.contains(KEY) && !body.contains("0123456789"),
        "{body}"
    );
    assert!(
        body.contains(&format!("Invalid API key: {stars}")),
        "{body}"
    );

    let r = get(p.addr, "/v1/sse").await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(
        body,
        format!("data: {{\"delta\":\"hi\"}}\n\ndata: {{\"echo\":\"{stars}\"}}\n\ndata: [DONE]\n\n")
    );

    // Compressed text cannot be scanned: refused, never passed on.
    let r = get(p.addr, "/v1/gzip").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (502, "response_not_scrubbable")
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(KEY));

    // Binary types pass unscanned (documented).
    let r = get(p.addr, "/v1/blob").await;
    assert_eq!(String::from_utf8_lossy(&r.body), format!("binary {KEY}"));

    assert_eq!(asked_identity.load(std::sync::atomic::Ordering::SeqCst), 4);

    // After a rotation, an answer that still quotes the replaced key is scrubbed too.
    std::fs::write(p.dir.path().join("key"), "sk_rotated_key_9876543210").unwrap();
    let new_fp = sidekey::credential::fingerprint(b"sk_rotated_key_9876543210");
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            String::from_utf8_lossy(&get(p.admin, "/credential").await.body).contains(&new_fp)
        })
        .await
    );
    let r = get(p.addr, "/v1/json").await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!body.contains(KEY) && body.contains(&stars), "{body}");
    let m = metrics(&p).await;
    assert!(
        m.lines().any(|l| l.starts_with("sidekey_key_echoes_total")
            && l.contains("where=\"body\"")
            && l.ends_with(" 7")),
        "{m}"
    );
    p.stop().await;
}
