//! Key and config hot reload with real files: in-place writes, rename-replace, and the
//! Kubernetes `..data` symlink swap (each twice: a watch on the file itself would die after
//! the first), bad updates that keep the last good key, and rotation under load.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sidekey::credential::fingerprint;

use crate::support::*;

const SETTLE: Duration = Duration::from_secs(5);

async fn live_fingerprint(p: &TestProxy) -> String {
    get(p.admin, "/credential").await.json()["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the upstream receives `key` on a fresh request.
async fn upstream_sees(p: &TestProxy, up: &Upstream, key: &str) -> bool {
    let want = fingerprint(key.as_bytes());
    eventually(SETTLE, || async {
        let _ = get(p.addr, "/v1/sandboxes").await;
        up.mock
            .requests()
            .last()
            .and_then(|r| r.headers.get("authorization").cloned())
            .is_some_and(|v| v == format!("Bearer {key}").as_str())
    })
    .await
        && live_fingerprint(p).await == want
}

#[tokio::test]
async fn in_place_rewrite_twice() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some("key-one"), &config_text(&up.mock.url(), "")).await;
    assert!(upstream_sees(&p, &up, "key-one").await);
    for key in ["key-two", "key-three"] {
        std::fs::write(p.key_path(), format!("{key}\n")).unwrap();
        assert!(upstream_sees(&p, &up, key).await, "{key} not picked up");
    }
    p.stop().await;
}

#[tokio::test]
async fn rename_replace_twice() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some("key-one"), &config_text(&up.mock.url(), "")).await;
    for key in ["key-two", "key-three"] {
        let tmp = p.key_path().with_extension("tmp");
        std::fs::write(&tmp, key).unwrap();
        std::fs::rename(&tmp, p.key_path()).unwrap();
        assert!(upstream_sees(&p, &up, key).await, "{key} not picked up");
    }
    p.stop().await;
}

/// Lays out a directory the way kubelet writes a Secret volume.
fn kube_write(dir: &Path, stamp: &str, key: &str) {
    let ts = dir.join(stamp);
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("api-key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(stamp, &tmp).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

#[tokio::test]
async fn kubernetes_data_symlink_swap_twice() {
    let up = Upstream::banata().await;
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    kube_write(&secret, "..2026_11_26_00_00_00.1", "key-one");
    std::os::unix::fs::symlink("..data/api-key", secret.join("api-key")).unwrap();
    let p = TestProxy::start_in(dir, &config_text(&up.mock.url(), "")).await;
    assert!(upstream_sees(&p, &up, "key-one").await);
    for (stamp, key) in [
        ("..2026_11_26_00_01_00.2", "key-two"),
        ("..2026_11_26_00_02_00.3", "key-three"),
    ] {
        kube_write(&p.dir.path().join("secret"), stamp, key);
        assert!(upstream_sees(&p, &up, key).await, "{key} not picked up");
    }
    p.stop().await;
}

/// `echo new > api-key` on a Secret-style layout writes through two symlinks into the
/// current `..<timestamp>/` directory: the watch must see it there (the periodic re-read is
/// 10 s away, beyond `SETTLE`), and again after a `..data` swap moved the key elsewhere.
#[tokio::test]
async fn in_place_rewrite_through_the_secret_symlinks() {
    let up = Upstream::banata().await;
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    kube_write(&secret, "..2026_12_02_00_00_00.1", "key-one");
    std::os::unix::fs::symlink("..data/api-key", secret.join("api-key")).unwrap();
    let p = TestProxy::start_in(dir, &config_text(&up.mock.url(), "")).await;
    let link = p.dir.path().join("secret/api-key");
    assert!(upstream_sees(&p, &up, "key-one").await);
    std::fs::write(&link, "key-two").unwrap();
    assert!(
        upstream_sees(&p, &up, "key-two").await,
        "in-place write missed"
    );
    kube_write(
        &p.dir.path().join("secret"),
        "..2026_12_02_00_01_00.2",
        "key-three",
    );
    assert!(upstream_sees(&p, &up, "key-three").await, "swap missed");
    std::fs::write(&link, "key-four").unwrap();
    assert!(
        upstream_sees(&p, &up, "key-four").await,
        "in-place write after a swap missed"
    );
    p.stop().await;
}

#[tokio::test]
async fn bad_updates_keep_the_last_good_key() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, Some("good-key"), &config_text(&up.mock.url(), "")).await;
    let good = fingerprint(b"good-key");
    let bad: [(&str, Option<&str>); 4] = [
        ("empty", Some("")),
        ("whitespace", Some("  \n\t ")),
        ("interior newline", Some("abc\ndef")),
        ("deleted", None),
    ];
    for (what, content) in bad {
        match content {
            Some(c) => std::fs::write(p.key_path(), c).unwrap(),
            None => std::fs::remove_file(p.key_path()).unwrap(),
        }
        let reported = eventually(SETTLE, || async {
            !get(p.admin, "/credential").await.json()["last_error"].is_null()
        })
        .await;
        assert!(reported, "{what}: error not reported");
        assert_eq!(live_fingerprint(&p).await, good, "{what}");
        assert_eq!(get(p.admin, "/readyz").await.status, 200, "{what}");
        let r = get(p.addr, "/v1/sandboxes").await;
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(
            up.mock.requests().last().unwrap().headers["authorization"],
            "Bearer good-key",
            "{what}"
        );
        // Restore, and wait for the error to clear before the next case.
        std::fs::write(p.key_path(), "good-key").unwrap();
        assert!(
            eventually(SETTLE, || async {
                get(p.admin, "/credential").await.json()["last_error"].is_null()
            })
            .await
        );
    }
    let m = metrics(&p).await;
    assert!(
        m.contains(r#"sidekey_credential_reloads_total{api="default",credential="default",result="invalid"}"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"sidekey_credential_reloads_total{api="default",credential="default",result="error"}"#
        ),
        "{m}"
    );
    p.stop().await;
}

#[tokio::test]
async fn start_without_key_then_key_appears() {
    let up = Upstream::banata().await;
    let p = TestProxy::start(&up, None, &config_text(&up.mock.url(), "")).await;
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(r.code(), "credential_unavailable");
    assert!(up.mock.requests().is_empty());
    std::fs::write(p.key_path(), "late-key").unwrap();
    let ok = eventually(Duration::from_secs(2), || async {
        get(p.addr, "/v1/sandboxes").await.status == 200
    })
    .await;
    assert!(ok, "key not picked up within 2 s");
    assert_eq!(get(p.admin, "/readyz").await.status, 200);
    p.stop().await;
}

#[tokio::test]
async fn rotation_under_load_fails_no_request() {
    let up = Upstream::banata().await;
    let p = Arc::new(TestProxy::start(&up, Some("rot-0"), &config_text(&up.mock.url(), "")).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (p, stop, failures, sent) = (p.clone(), stop.clone(), failures.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = get(p.addr, "/v1/sandboxes").await;
                sent.fetch_add(1, Ordering::SeqCst);
                if r.status != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for i in 1..=20 {
        let key = format!("rot-{i}");
        let tmp = p.key_path().with_extension("tmp");
        std::fs::write(&tmp, &key).unwrap();
        std::fs::rename(&tmp, p.key_path()).unwrap();
        let fp = fingerprint(key.as_bytes());
        assert!(
            eventually(SETTLE, || async { live_fingerprint(&p).await == fp }).await,
            "rotation {i} not seen"
        );
        // After the swap settles, new requests carry only the new key.
        let before = up.mock.requests().len();
        assert!(eventually(SETTLE, || async { up.mock.requests().len() > before + 4 }).await);
        let after: Vec<_> = up.mock.requests().into_iter().skip(before + 4).collect();
        assert!(
            after
                .iter()
                .all(|r| r.headers["authorization"] == format!("Bearer {key}").as_str()),
            "old key after rotation {i}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!(sent.load(Ordering::SeqCst) > 40);
    let valid: Vec<String> = (0..=20).map(|i| format!("Bearer rot-{i}")).collect();
    for r in up.mock.requests() {
        let auth: Vec<_> = r
            .headers
            .get_all("authorization")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(auth.len(), 1);
        assert!(valid.contains(&auth[0]), "unexpected key {auth:?}");
    }
}

#[tokio::test]
async fn config_reload_changes_decisions_and_refuses_bad_updates() {
    let up = Upstream::banata().await;
    let text = config_text(&up.mock.url(), "");
    let p = TestProxy::start(&up, Some(KEY), &text).await;
    let config_path = p.dir.path().join("sidekey.toml");
    assert_eq!(
        request(p.addr, "DELETE", "/v1/sandboxes/sb_1", &[])
            .await
            .code(),
        "permission_denied"
    );

    // Invalid: unknown permission. The old policy keeps serving.
    std::fs::write(
        &config_path,
        text.replace(
            "\"sandbox_sessions:read\"]",
            "\"sandbox_sessions:read\", \"nope\"]",
        ),
    )
    .unwrap();
    assert!(
        eventually(SETTLE, || async {
            metrics(&p)
                .await
                .contains(r#"sidekey_config_reloads_total{result="invalid"}"#)
        })
        .await
    );
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);

    // Not reloadable: the admin address.
    std::fs::write(
        &config_path,
        text.replace(
            "[admin]\naddress = \"127.0.0.1:0\"",
            "[admin]\naddress = \"127.0.0.1:1\"",
        ),
    )
    .unwrap();
    assert!(
        eventually(SETTLE, || async {
            metrics(&p)
                .await
                .contains(r#"sidekey_config_reloads_total{result="refused"}"#)
        })
        .await
    );

    // Valid: grant delete. Decisions change without restart.
    std::fs::write(
        &config_path,
        text.replace(
            "\"sandbox_sessions:read\"]",
            "\"sandbox_sessions:read\", \"sandbox_sessions:delete\"]",
        ),
    )
    .unwrap();
    let granted = eventually(SETTLE, || async {
        request(p.addr, "DELETE", "/v1/sandboxes/sb_1", &[])
            .await
            .status
            == 200
    })
    .await;
    assert!(granted, "valid config update not applied");
    assert_eq!(
        up.mock.requests().last().unwrap().method,
        http::Method::DELETE
    );
    p.stop().await;
}

/// An upstream that takes only `Bearer <accept>`: 401 for anything else.
fn only_key(accept: Arc<std::sync::Mutex<String>>) -> sidekey::mock::Handler {
    Arc::new(move |req| {
        let accept = accept.lock().unwrap().clone();
        Box::pin(async move {
            let ok = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {accept}"));
            let status = if ok {
                http::StatusCode::OK
            } else {
                http::StatusCode::UNAUTHORIZED
            };
            sidekey::mock::json(status, &serde_json::json!({"ok": ok}))
        })
    })
}

/// The key was rotated and the old one revoked before sidekey noticed (the watch is slow
/// here: a 10 s debounce). The 401 makes sidekey re-read the key at once and replay the
/// bodiless request once with the new key; a request with a body is never replayed.
#[tokio::test]
async fn an_upstream_401_rereads_the_key_and_replays_once() {
    let accept = Arc::new(std::sync::Mutex::new("sk_old_0001".to_owned()));
    let up = Upstream::with(only_key(accept.clone())).await;
    let text = config_text(&up.mock.url(), "").replace("debounce = \"50ms\"", "debounce = \"10s\"");
    let p = TestProxy::start(&up, Some("sk_old_0001"), &text).await;
    // Serving (its start-up re-read done) with the old key.
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    // Rotate and revoke the old key at once.
    *accept.lock().unwrap() = "sk_new_0002".into();
    std::fs::write(p.key_path(), "sk_new_0002").unwrap();
    let r = get(p.addr, "/v1/sandboxes").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen: Vec<String> = up
        .mock
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        seen,
        [
            "Bearer sk_old_0001",
            "Bearer sk_old_0001",
            "Bearer sk_new_0002"
        ]
    );
    assert_eq!(
        live_fingerprint(&p).await,
        sidekey::credential::fingerprint(b"sk_new_0002")
    );

    // Revoked with no new key: each 401 is answered as is, one upstream request each, and
    // the re-reads are not one per request.
    *accept.lock().unwrap() = "sk_other_0003".into();
    let before = up.mock.requests().len();
    let started = std::time::Instant::now();
    let all = (0..10).map(|_| get(p.addr, "/v1/sandboxes"));
    for r in futures_util::future::join_all(all).await {
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        up.mock.requests().len(),
        before + 10,
        "no replay without a new key"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // A body is never replayed, even when the key did change.
    std::fs::write(p.key_path(), "sk_other_0003").unwrap();
    let before = up.mock.requests().len();
    let body = http::Request::builder()
        .method("POST")
        .uri("/v1/sandboxes")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"a\":1}",
        )))
        .unwrap();
    let r = send(p.addr, body).await;
    assert_eq!(r.status, 401);
    let seen = up.mock.requests();
    assert_eq!(seen.len(), before + 1, "a request with a body goes once");
    assert_eq!(seen[before].headers["authorization"], "Bearer sk_new_0002");
    p.stop().await;
}

/// The "verify" step: which key every instance serves, asked of the admin endpoints.
#[tokio::test]
async fn rotation_status_asks_every_admin_endpoint() {
    let up = Upstream::banata().await;
    let p1 = TestProxy::start(
        &up,
        Some("sk_rot_new_0001"),
        &config_text(&up.mock.url(), ""),
    )
    .await;
    let p2 = TestProxy::start(
        &up,
        Some("sk_rot_old_0002"),
        &config_text(&up.mock.url(), ""),
    )
    .await;
    let new = fingerprint(b"sk_rot_new_0001");
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sidekey(&args)
        })
    };
    let base = |p: &TestProxy| format!("http://{}", p.admin);
    let one = vec![
        "rotation".into(),
        "status".into(),
        "--expect".into(),
        new.clone(),
        "--admin".into(),
        base(&p1),
    ];
    let (code, out, err) = run(one).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&new) && out.contains("default/default"),
        "{out}"
    );
    assert!(out.contains("the old key can be revoked"), "{out}");
    // One instance still serves the old key: 1.
    let both = vec![
        "rotation".into(),
        "status".into(),
        "--expect".into(),
        new.clone(),
        "--admin".into(),
        base(&p1),
        "--admin".into(),
        base(&p2),
    ];
    let (code, out, _) = run(both).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("<- not the expected key"), "{out}");
    // An instance that cannot be asked: 2.
    let gone = vec![
        "rotation".into(),
        "status".into(),
        "--expect".into(),
        new.clone(),
        "--admin".into(),
        base(&p1),
        "--admin".into(),
        "http://127.0.0.1:9".into(),
    ];
    let (code, out, _) = run(gone).await.unwrap();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot ask"), "{out}");
    p1.stop().await;
    p2.stop().await;
}

/// A 401 to a request with a body re-reads the key at once too (only the replay is limited
/// to bodiless requests): the next request goes out with the new key.
#[tokio::test]
async fn a_401_to_a_request_with_a_body_rereads_the_key() {
    let accept = Arc::new(std::sync::Mutex::new("sk_old_0001".to_owned()));
    let up = Upstream::with(only_key(accept.clone())).await;
    let text = config_text(&up.mock.url(), "").replace("debounce = \"50ms\"", "debounce = \"10s\"");
    let p = TestProxy::start(&up, Some("sk_old_0001"), &text).await;
    // Serving (its start-up re-read done) with the old key.
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    *accept.lock().unwrap() = "sk_new_0002".into();
    std::fs::write(p.key_path(), "sk_new_0002").unwrap();
    let body = http::Request::builder()
        .method("POST")
        .uri("/v1/sandboxes")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(
        send(p.addr, body).await.status,
        401,
        "a body is not replayed"
    );
    let new = fingerprint(b"sk_new_0002");
    assert!(
        eventually(Duration::from_secs(3), || async {
            live_fingerprint(&p).await == new
        })
        .await,
        "the 401 did not re-read the key"
    );
    assert_eq!(get(p.addr, "/v1/sandboxes").await.status, 200);
    p.stop().await;
}
