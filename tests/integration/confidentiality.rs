//! The key never appears in anything sidekey writes: the real binary runs with
//! `RUST_LOG=trace`, scenarios use recognisable keys, and every byte it produced (stdout,
//! stderr, admin bodies, error bodies, response headers) is scanned for them.

use std::time::Duration;

use crate::support::*;

const MARK: &str = "CONFIDENTIAL";

fn dump(r: &Reply) -> String {
    let headers: String = r
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    format!("{headers}{}", String::from_utf8_lossy(&r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_never_appears_in_any_output() {
    let up = Upstream::banata().await;
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    let key1 = format!("sk_live_{MARK}_first_0001");
    let key2 = format!("sk_live_{MARK}_second_0002");
    dir.write("secret/api-key", &key1);
    let config = dir.write("sidekey.toml", &config_text(&up.mock.url(), ""));
    // Logs go to files beside the config on purpose: writing them must not feed the watcher.
    let run = Running::start(&config, "trace", dir.path()).await;
    let (proxy, admin) = (run.proxy, run.admin);

    let mut produced = String::new();
    let caller = format!("Bearer caller-{MARK}-guess");
    for (method, path) in [
        ("GET", "/v1/sandboxes"),
        ("DELETE", "/v1/sandboxes/sb_1"),
        ("GET", "/v2/x"),
        ("GET", "/v1/sandboxes/%2e%2e/x"),
    ] {
        produced +=
            &dump(&request(proxy, method, path, &[("authorization", caller.as_str())]).await);
    }
    // Rotate to a new key, then to an invalid one (which must not be echoed either).
    std::fs::write(dir.path().join("secret/api-key"), &key2).unwrap();
    let fp2 = sidekey::credential::fingerprint(key2.as_bytes());
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(admin, "/credential").await.json()["fingerprint"] == fp2.as_str()
        })
        .await
    );
    std::fs::write(
        dir.path().join("secret/api-key"),
        format!("sk bad {MARK} with spaces"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !get(admin, "/credential").await.json()["last_error"].is_null()
        })
        .await
    );
    produced += &dump(&get(proxy, "/v1/sandboxes/sb_9").await);
    for path in ["/metrics", "/readyz", "/healthz", "/credential"] {
        produced += &dump(&get(admin, path).await);
    }
    // Every request upstream carried exactly the key: the scan below is not vacuous.
    assert!(
        up.mock
            .requests()
            .iter()
            .any(|r| r.headers["authorization"] == format!("Bearer {key1}").as_str())
    );
    assert!(
        up.mock
            .requests()
            .iter()
            .any(|r| r.headers["authorization"] == format!("Bearer {key2}").as_str())
    );

    let (stdout, stderr) = (run.stdout.clone(), run.stderr.clone());
    assert_eq!(run.stop().await, Some(0), "SIGTERM should stop cleanly");
    let out = std::fs::read_to_string(stdout).unwrap();
    let err = std::fs::read_to_string(stderr).unwrap();
    assert!(
        out.lines().count() > 20,
        "trace logging produced too little to be a real test"
    );
    for (what, text) in [("stdout", &out), ("stderr", &err), ("responses", &produced)] {
        if let Some(i) = text.find(MARK) {
            let start = i.saturating_sub(200);
            panic!(
                "{what} contains key material: ...{}...",
                &text[start..(i + 100).min(text.len())]
            );
        }
    }
}
