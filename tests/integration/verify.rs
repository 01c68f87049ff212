//! A rotated key is tried before it is used: `verify = "GET /path"` goes to the origin with the
//! new key while the current one keeps serving. A mock accepts only listed keys: a refused new
//! key keeps traffic on the old one (no failed request) and shows as pending; the key activated
//! later is switched to within an interval; an API outage does not block the switch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidekey::mock::MockUpstream;
use sidekey::pki::Ca;

use crate::support::*;

const OLD: &str = "sk_verify_old_0001";
const NEW: &str = "sk_verify_new_0002";

struct Api {
    ca: Ca,
    mock: MockUpstream,
    accepted: Arc<Mutex<Vec<String>>>,
    /// The verify route answers 503 (an outage of the API).
    outage: Arc<AtomicBool>,
}

async fn api() -> Api {
    let ca = Ca::new("test CA").unwrap();
    let accepted = Arc::new(Mutex::new(vec![OLD.to_owned()]));
    let outage = Arc::new(AtomicBool::new(false));
    let (a, o) = (accepted.clone(), outage.clone());
    let handler: sidekey::mock::Handler = Arc::new(move |req| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let known = a
            .lock()
            .unwrap()
            .iter()
            .any(|k| auth == format!("Bearer {k}"));
        let down = o.load(Ordering::SeqCst) && req.uri().path() == "/v1/me";
        Box::pin(async move {
            let status = match (down, known) {
                (true, _) => 503,
                (false, true) => 200,
                (false, false) => 401,
            };
            sidekey::mock::json(
                http::StatusCode::from_u16(status).unwrap(),
                &serde_json::json!({}),
            )
        })
    });
    let mock = MockUpstream::start(&ca, handler).await.unwrap();
    Api {
        ca,
        mock,
        accepted,
        outage,
    }
}

async fn start(a: &Api) -> TestProxy {
    let dir = TempDir::new();
    dir.write("ca.pem", a.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    dir.write("keys/banata", OLD);
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[api.banata]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/"
verify = "GET /v1/me"
credential = {{ file = "keys/banata" }}
[api.banata.permissions]
"read" = ["GET /v1/sandboxes", "GET /v1/me"]
[service]
name = "verify-test"
allow = ["banata/read"]
[runtime]
shutdown_idle = "50ms"
[reload]
interval = "300ms"
debounce = "20ms"
"#,
        a.mock.url()
    );
    TestProxy::start_in(dir, &config).await
}

async fn credential(p: &TestProxy) -> serde_json::Value {
    let r = get(p.admin, "/credential").await;
    serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["credentials"][0].clone()
}

/// Sends requests until told to stop; every status.
fn load(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            statuses.push(get(addr, "/v1/sandboxes").await.status.as_u16());
        }
        statuses
    })
}

/// The keys the mock saw on normal requests (not the verify route), in order.
fn served_with(mock: &MockUpstream) -> Vec<String> {
    mock.requests()
        .iter()
        .filter(|r| r.target == "/v1/sandboxes")
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_refused_new_key_waits_and_is_switched_to_once_active() {
    let a = api().await;
    let p = start(&a).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(p.addr, stop.clone());
    std::fs::write(p.dir.path().join("keys/banata"), NEW).unwrap();
    let new_fp = sidekey::credential::fingerprint(NEW.as_bytes());
    let old_fp = sidekey::credential::fingerprint(OLD.as_bytes());
    let rejected = eventually(Duration::from_secs(10), || async {
        let c = credential(&p).await;
        c["pending"]["state"] == "rejected" && c["pending"]["fingerprint"] == new_fp.as_str()
    })
    .await;
    assert!(rejected, "{}", credential(&p).await);
    let c = credential(&p).await;
    assert_eq!(
        c["fingerprint"],
        old_fp.as_str(),
        "the old key stays in use"
    );
    assert_eq!(c["pending"]["status"], 401);
    let page = String::from_utf8_lossy(&get(p.admin, "/").await.body).into_owned();
    assert!(
        page.contains(&format!("{new_fp} rejected (HTTP 401)")),
        "{page}"
    );
    // Tried again each interval while refused, never a storm.
    let probes = || {
        a.mock
            .requests()
            .iter()
            .filter(|r| r.target == "/v1/me")
            .count()
    };
    assert!(eventually(Duration::from_secs(5), || async { probes() >= 3 }).await);
    let m = metrics(&p).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("sidekey_credential_verifications_total")
                && l.contains("result=\"rejected\"")
                && !l.ends_with(" 0")),
        "{m}"
    );
    assert!(
        served_with(&a.mock)
            .iter()
            .all(|k| k == &format!("Bearer {OLD}"))
    );

    // The provider activates the key: switched within an interval or so.
    a.accepted.lock().unwrap().push(NEW.to_owned());
    let switched = eventually(Duration::from_secs(5), || async {
        let c = credential(&p).await;
        c["fingerprint"] == new_fp.as_str() && c["pending"].is_null()
    })
    .await;
    assert!(switched, "{}", credential(&p).await);
    let tries = probes();
    assert!(tries < 30, "{tries} verify requests in a few seconds");
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_with(&a.mock).last() == Some(&format!("Bearer {NEW}"))
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    let statuses = traffic.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    p.stop().await;
}

#[tokio::test]
async fn an_api_outage_does_not_block_the_switch() {
    let a = api().await;
    let p = start(&a).await;
    a.outage.store(true, Ordering::SeqCst);
    a.accepted.lock().unwrap().push(NEW.to_owned());
    std::fs::write(p.dir.path().join("keys/banata"), NEW).unwrap();
    let new_fp = sidekey::credential::fingerprint(NEW.as_bytes());
    let switched = eventually(Duration::from_secs(10), || async {
        credential(&p).await["fingerprint"] == new_fp.as_str()
    })
    .await;
    assert!(switched, "{}", credential(&p).await);
    let m = metrics(&p).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("sidekey_credential_verifications_total")
                && l.contains("result=\"unverified\"")
                && !l.ends_with(" 0")),
        "{m}"
    );
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    p.stop().await;
}
