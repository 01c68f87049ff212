//! Least privilege in practice: `[[test]]` expectations and lints in `check`, report-only
//! mode (would-deny forwarded, counted, logged; ambiguous paths still blocked), and
//! `suggest` turning the access log into exactly the minimal grant.

use crate::support::*;

fn write_config(dir: &TempDir, extra: &str) -> String {
    dir.write("ca.pem", sidekey::pki::Ca::new("t").unwrap().cert_pem());
    let p = dir.write("s.toml", &config_text("https://api.example.com", extra));
    p.to_str().unwrap().to_owned()
}

#[test]
fn policy_tests_in_check() {
    let dir = TempDir::new();
    let good = "[[test]]\nrequest = \"POST /v1/sandboxes\"\nexpect = \"allow\"\n[[test]]\nrequest = \"DELETE /v1/sandboxes/sb_1\"\nexpect = \"deny\"\n[[test]]\nrequest = \"GET /v1/sandboxes/%2e%2e/x\"\nexpect = \"reject\"\n";
    let cfg = write_config(&dir, good);
    let (code, out, err) = sidekey(&["check", "--config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("tests: 3 passed, 0 failed"), "{out}");

    let bad =
        format!("{good}[[test]]\nrequest = \"DELETE /v1/sandboxes/sb_2\"\nexpect = \"allow\"\n");
    let cfg = write_config(&dir, &bad);
    let (code, out, _) = sidekey(&["check", "--config", &cfg]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL")
            && out.contains("`DELETE /v1/sandboxes/sb_2` expected allow, got deny"),
        "{out}"
    );

    let (code, out, _) = sidekey(&["check", "--config", &cfg, "--format", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["tests"][3]["got"], "deny");
    assert_eq!(
        v["grants"]["sandbox_sessions:read"][1],
        "GET /v1/sandboxes/{id}"
    );

    let cfg = write_config(&dir, "[[test]]\nrequest = \"POST\"\nexpect = \"allow\"\n");
    let (code, _, err) = sidekey(&["check", "--config", &cfg]);
    assert_eq!(code, 64);
    assert!(err.contains("test[0].request"), "{err}");
}

#[test]
fn lints_warn_and_strict_fails() {
    let dir = TempDir::new();
    // exec claims a more specific GET than read's catch-all: requests there need exec.
    let cfg = write_config(&dir, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "\"sandbox_sessions:exec\" = [\"POST /v1/sandboxes/{id}/exec\"]",
        "\"sandbox_sessions:exec\" = [\"POST /v1/sandboxes/{id}/exec\", \"GET /v1/sandboxes/{id}/files/{*path}\"]",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, out, _) = sidekey(&["check", "--config", &cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: shadowed_route"), "{out}");
    assert!(
        out.contains("`GET /v1/sandboxes/{id}/files/{*path}` wins"),
        "{out}"
    );
    let (code, out, _) = sidekey(&["check", "--config", &cfg, "--strict"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: shadowed_route"), "{out}");
}

#[test]
fn shipped_catalogue_is_lint_clean() {
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidekey.example.toml");
    let (code, out, err) = sidekey(&["check", "--strict", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_forwards_logs_and_suggests_the_minimal_grant() {
    let up = Upstream::banata().await;
    let dir = TempDir::new();
    dir.write("ca.pem", up.ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    dir.write("secret/api-key", KEY);
    let text = config_text(&up.mock.url(), "").replace(
        "name = \"test-svc\"",
        "name = \"test-svc\"\nmode = \"report\"",
    );
    let config = dir.write("sidekey.toml", &text);
    let logs = TempDir::new();
    let run = Running::start(&config, "info", logs.path()).await;
    let (proxy, admin) = (run.proxy, run.admin);
    let log_path = run.stdout.clone();
    assert_eq!(get(admin, "/readyz").await.json()["mode"], "report");

    // Allowed, would-deny (permission and no route), and rejected.
    assert_eq!(
        request(proxy, "POST", "/v1/sandboxes", &[]).await.status,
        201
    );
    assert_eq!(
        request(proxy, "GET", "/v1/sandboxes/sb_1", &[])
            .await
            .status,
        200
    );
    assert_eq!(
        request(proxy, "DELETE", "/v1/sandboxes/sb_1", &[])
            .await
            .status,
        200
    );
    assert_eq!(
        request(proxy, "DELETE", "/v1/sandboxes/sb_2", &[])
            .await
            .status,
        200
    );
    assert_eq!(request(proxy, "GET", "/v2/unknown", &[]).await.status, 200);
    let r = request(proxy, "GET", "/v1/sandboxes/%2e%2e/admin", &[]).await;
    assert_eq!(
        r.status, 400,
        "ambiguous paths are rejected in report mode too"
    );
    let seen: Vec<String> = up
        .mock
        .requests()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(!seen.iter().any(|s| s.contains("..") || s.contains("%2e")));
    let metrics = String::from_utf8_lossy(&get(admin, "/metrics").await.body).into_owned();
    assert!(metrics.contains(r#"decision="would_deny""#), "{metrics}");

    run.stop().await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let would: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["decision"] == "would_deny")
        .collect();
    assert_eq!(would.len(), 3, "{log}");
    assert!(
        would
            .iter()
            .any(|v| v["missing_permission"] == "sandbox_sessions:delete"),
        "{log}"
    );

    // suggest: exactly the permissions the traffic needed, and the uncovered request.
    let (code, out, err) = sidekey(&[
        "suggest",
        "--config",
        config.to_str().unwrap(),
        "--access-log",
        log_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("allow = [\"sandbox_sessions:create\", \"sandbox_sessions:delete\", \"sandbox_sessions:read\"]"), "{out}");
    assert!(
        out.contains("sandbox_sessions:delete: 2 requests (NOT granted now)"),
        "{out}"
    );
    assert!(out.contains("GET /v2/unknown (1)"), "{out}");
    assert!(!out.contains("sandbox_sessions:exec"), "{out}");
    let (_, out, _) = sidekey(&[
        "suggest",
        "--config",
        config.to_str().unwrap(),
        "--access-log",
        log_path.to_str().unwrap(),
        "--since",
        "1ms",
    ]);
    assert!(out.contains("# 0 requests observed"), "{out}");
}
