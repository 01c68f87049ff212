//! Every way an API takes a key: Basic, a query parameter, a path template, several headers.
//! Four recording TLS mocks, one per API, behind one sidekey: each sees exactly one credential
//! in the right place (the caller's copies gone), the path that was checked, and no other
//! API's secret; refusals send nothing; rotation of one part under load fails no request; a
//! 401 re-reads the key and replays with the scheme applied again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use sidekey::mock::{Handler, MockUpstream};
use sidekey::pki::Ca;

use crate::support::*;

const TW_TOKEN: &str = "tw_auth_token_0001";
const MAPS_KEY: &str = "AIzaMaps+/key&0001";
const MAPS_KEY_ENCODED: &str = "AIzaMaps%2B%2Fkey%260001";
const TG_TOKEN: &str = "123456:tg-token_0001";
const DD_API: &str = "dd_api_key_0001";
const DD_APP: &str = "dd_app_key_0001";
const SECRETS: [&str; 5] = [TW_TOKEN, MAPS_KEY, TG_TOKEN, DD_API, DD_APP];

/// Whether the mock accepts a request (target, headers).
type Accept = Arc<dyn Fn(&http::Uri, &http::HeaderMap) -> bool + Send + Sync>;

/// Answers 401 when `accept` says no, else 200 echoing the target; on a path holding a
/// Telegram-style `bot...` segment, `Location` and `Content-Location` carry that segment.
fn echo(accept: Accept) -> Handler {
    Arc::new(move |req| {
        let ok = accept(req.uri(), req.headers());
        Box::pin(async move {
            let target = req.uri().path_and_query().map(|p| p.as_str().to_owned());
            let status = if ok { 200 } else { 401 };
            let mut resp = sidekey::mock::json(
                http::StatusCode::from_u16(status).unwrap(),
                &serde_json::json!({ "target": target }),
            );
            let path = req.uri().path();
            let first = path.split('/').nth(1).unwrap_or_default();
            if first.starts_with("bot") {
                // HTTP/2 carries the origin in `:authority`, HTTP/1.1 in `Host`.
                let host = match req.uri().authority() {
                    Some(a) => a.to_string(),
                    None => req.headers()["host"].to_str().unwrap().to_owned(),
                };
                let h = resp.headers_mut();
                h.insert("location", format!("/{first}/moved").parse().unwrap());
                h.insert(
                    "content-location",
                    format!("https://{host}/{first}/here").parse().unwrap(),
                );
            }
            resp
        })
    })
}

fn any() -> Accept {
    Arc::new(|_, _| true)
}

struct Mocks {
    ca: Ca,
    twilio: MockUpstream,
    maps: MockUpstream,
    telegram: MockUpstream,
    datadog: MockUpstream,
}

async fn mocks(maps_accept: Option<Arc<Mutex<String>>>) -> Mocks {
    let ca = Ca::new("test CA").unwrap();
    let maps_check: Accept = match maps_accept {
        Some(cur) => Arc::new(move |uri: &http::Uri, _: &http::HeaderMap| {
            let want = format!("key={}", cur.lock().unwrap());
            uri.query().is_some_and(|q| q.split('&').any(|p| p == want))
        }),
        None => any(),
    };
    Mocks {
        twilio: MockUpstream::start(&ca, echo(any())).await.unwrap(),
        maps: MockUpstream::start(&ca, echo(maps_check)).await.unwrap(),
        telegram: MockUpstream::start(&ca, echo(any())).await.unwrap(),
        datadog: MockUpstream::start(&ca, echo(any())).await.unwrap(),
        ca,
    }
}

fn config(m: &Mocks, debounce: &str) -> String {
    format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"

[api.twilio]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/twilio"
credential = {{ scheme = "basic", username = "AC0123", password_file = "keys/twilio" }}
[api.twilio.permissions]
"messages:send" = ["POST /2010-04-01/Accounts/{{sid}}/Messages.json"]

[api.maps]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/maps"
credential = {{ scheme = "query", param = "key", file = "keys/maps" }}
[api.maps.permissions]
"geocode" = ["GET /maps/api/geocode/json"]

[api.telegram]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/telegram"
credential = {{ scheme = "path", template = ["/bot{{key}}", "/file/bot{{key}}"], file = "keys/telegram" }}
[api.telegram.permissions]
"bot:read" = ["GET /getMe", "GET /photos/{{name}}"]
"bot:send" = ["POST /sendMessage"]

[api.datadog]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/datadog"
[api.datadog.credential]
scheme = "headers"
headers = {{ "dd-api-key" = {{ file = "keys/dd-api" }}, "dd-application-key" = {{ file = "keys/dd-app" }} }}
[api.datadog.permissions]
"validate" = ["GET /api/v1/validate"]

[service]
name = "orders-api"
allow = ["twilio/messages:send", "maps/geocode", "telegram/bot:read", "datadog/validate"]

[runtime]
shutdown_idle = "50ms"
[reload]
interval = "30s"
debounce = "{debounce}"
"#,
        m.twilio.url(),
        m.maps.url(),
        m.telegram.url(),
        m.datadog.url(),
    )
}

async fn start(m: &Mocks, debounce: &str) -> TestProxy {
    let dir = TempDir::new();
    dir.write("ca.pem", m.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    dir.write("keys/twilio", TW_TOKEN);
    dir.write("keys/maps", MAPS_KEY);
    dir.write("keys/telegram", TG_TOKEN);
    dir.write("keys/dd-api", DD_API);
    dir.write("keys/dd-app", DD_APP);
    TestProxy::start_in(dir, &config(m, debounce)).await
}

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

/// No secret of another API anywhere in what `mock` received (target and headers).
fn no_foreign_secret(mock: &MockUpstream, own: &[&str]) {
    for r in mock.requests() {
        let mut seen = vec![r.target.clone()];
        seen.extend(
            r.headers
                .values()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
        for secret in SECRETS.iter().filter(|s| !own.contains(s)) {
            assert!(
                seen.iter().all(|v| !v.contains(secret)),
                "{secret} in {r:?}"
            );
        }
    }
}

#[tokio::test]
async fn each_scheme_puts_exactly_one_credential_in_its_place() {
    let m = mocks(None).await;
    let p = start(&m, "50ms").await;

    // basic: the caller's Authorization goes, one Basic header arrives.
    let r = request(
        p.addr,
        "POST",
        "/twilio/2010-04-01/Accounts/AC0123/Messages.json",
        &[
            ("authorization", "Basic Y2FsbGVyOnh4"),
            ("x_authorization", "x"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = &m.twilio.requests()[0];
    assert_eq!(seen.target, "/2010-04-01/Accounts/AC0123/Messages.json");
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, [basic("AC0123", TW_TOKEN).as_str()]);

    // query: every spelling of the caller's `key` goes, ours is appended, encoded.
    let r = get(
        p.addr,
        "/maps/maps/api/geocode/json?address=a%20b&key=caller&k%65y=2&KEY=upper",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        m.maps.requests()[0].target,
        format!("/maps/api/geocode/json?address=a%20b&KEY=upper&key={MAPS_KEY_ENCODED}")
    );
    assert!(m.maps.requests()[0].headers.get("authorization").is_none());

    // path: a base-URL client sends no template; a forward-proxy style client a placeholder.
    // Both are checked as `GET /getMe` and forwarded with the token in front.
    let tg = TG_TOKEN;
    for path in ["/telegram/getMe", "/telegram/botPLACEHOLDER/getMe"] {
        let r = get(p.addr, path).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        // Links take the key back out and stay behind sidekey.
        assert_eq!(r.headers["location"], "http://localhost/telegram/moved");
        assert_eq!(
            r.headers["content-location"],
            "http://localhost/telegram/here"
        );
    }
    let r = get(p.addr, "/telegram/file/botX/photos/a.jpg").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let targets: Vec<String> = m
        .telegram
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        targets,
        [
            format!("/bot{tg}/getMe"),
            format!("/bot{tg}/getMe"),
            format!("/file/bot{tg}/photos/a.jpg"),
        ]
    );
    // The template never hides a route: an ungranted method is refused, nothing sent, and
    // the placeholder cannot smuggle a dot segment.
    let r = request(p.addr, "POST", "/telegram/botP/sendMessage", &[]).await;
    assert_eq!(r.code(), "permission_denied");
    let r = get(p.addr, "/telegram/botP/../sendMessage").await;
    assert_eq!(r.status, 400);
    assert_eq!(m.telegram.requests().len(), 3);

    // headers: both set from their own parts; caller copies (and `_` spellings) gone.
    let r = request(
        p.addr,
        "GET",
        "/datadog/api/v1/validate",
        &[("dd-api-key", "caller"), ("dd_application_key", "caller2")],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = &m.datadog.requests()[0];
    let api: Vec<_> = seen.headers.get_all("dd-api-key").iter().collect();
    assert_eq!(api, [DD_API]);
    assert_eq!(seen.headers["dd-application-key"], DD_APP);
    assert!(seen.headers.get("dd_application_key").is_none());

    no_foreign_secret(&m.twilio, &[TW_TOKEN]);
    no_foreign_secret(&m.maps, &[MAPS_KEY]);
    no_foreign_secret(&m.telegram, &[TG_TOKEN]);
    no_foreign_secret(&m.datadog, &[DD_API, DD_APP]);

    // /credential: every part with its source and fingerprint, never a value.
    let body = admin_get(p.admin, "/credential").await;
    for secret in SECRETS {
        assert!(!body.contains(secret), "{secret} in /credential");
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let dd = v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "datadog")
        .unwrap();
    assert_eq!(dd["scheme"], "headers");
    let fps: Vec<&str> = dd["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(
        fps,
        [
            sidekey::credential::fingerprint(DD_API.as_bytes()),
            sidekey::credential::fingerprint(DD_APP.as_bytes())
        ]
    );
    let tw = v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "twilio")
        .unwrap();
    assert_eq!(tw["parts"][0]["source"], "config");
    assert!(tw["parts"][0]["fingerprint"].is_null());
    assert_eq!(
        tw["fingerprint"],
        sidekey::credential::fingerprint(TW_TOKEN.as_bytes())
    );
    // `rotation status --credential api/part` asks about one part.
    use sidekey::cli::rotation;
    let admin = vec![format!("http://{}", p.admin)];
    let (rows, failed) = rotation::collect(rotation::Source::Admin(&admin)).await;
    let part = Some("datadog/dd-application-key");
    let fp = |k: &str| sidekey::credential::fingerprint(k.as_bytes());
    assert_eq!(
        rotation::verdict(&rows, &failed, &fp(DD_APP), part),
        0,
        "{rows:?}"
    );
    assert_eq!(
        rotation::verdict(&rows, &failed, &fp(DD_API), part),
        1,
        "{rows:?}"
    );
    p.stop().await;
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    let r = get(addr, path).await;
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test]
async fn rotating_one_part_under_load_fails_no_request() {
    let m = mocks(None).await;
    let p = start(&m, "50ms").await;
    let addr = p.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let a = get(addr, "/datadog/api/v1/validate").await.status;
                let b = request(
                    addr,
                    "POST",
                    "/twilio/2010-04-01/Accounts/AC0123/Messages.json",
                    &[],
                )
                .await
                .status;
                statuses.push(a);
                statuses.push(b);
            }
            statuses
        })
    };
    let keys = p.dir.path().join("keys");
    std::fs::write(keys.join("dd-app"), "dd_app_key_0002").unwrap();
    std::fs::write(keys.join("twilio"), "tw_auth_token_0002").unwrap();
    let rotated = eventually(Duration::from_secs(10), || async {
        let dd = m.datadog.requests();
        let tw = m.twilio.requests();
        dd.last()
            .is_some_and(|r| r.headers["dd-application-key"] == "dd_app_key_0002")
            && tw.last().is_some_and(|r| {
                r.headers["authorization"] == basic("AC0123", "tw_auth_token_0002").as_str()
            })
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = load.await.unwrap();
    assert!(rotated, "the new parts were never sent");
    assert!(statuses.len() >= 2);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // One consistent set per request: the API key part never changed, so every request
    // carried it with one of the two application keys.
    for r in m.datadog.requests() {
        assert_eq!(r.headers["dd-api-key"], DD_API);
        let app = r.headers["dd-application-key"].to_str().unwrap();
        assert!(app == DD_APP || app == "dd_app_key_0002", "{app}");
    }
    p.stop().await;
}

#[tokio::test]
async fn a_401_replays_with_the_query_key_applied_again() {
    let accept = Arc::new(Mutex::new(MAPS_KEY_ENCODED.to_owned()));
    let m = mocks(Some(accept.clone())).await;
    // A long debounce: only the 401's re-read can see the new key in time.
    let p = start(&m, "10s").await;
    let path = "/maps/maps/api/geocode/json?address=x";
    assert_eq!(get(p.addr, path).await.status, 200);
    *accept.lock().unwrap() = "maps_key_0002".into();
    std::fs::write(p.dir.path().join("keys/maps"), "maps_key_0002").unwrap();
    let r = get(p.addr, path).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let targets: Vec<String> = m.maps.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        [
            format!("/maps/api/geocode/json?address=x&key={MAPS_KEY_ENCODED}"),
            format!("/maps/api/geocode/json?address=x&key={MAPS_KEY_ENCODED}"),
            "/maps/api/geocode/json?address=x&key=maps_key_0002".to_owned(),
        ],
        "one replay, with exactly one key parameter"
    );
    p.stop().await;
}
