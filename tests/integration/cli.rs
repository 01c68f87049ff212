//! The binary's `check` and `explain` contracts, and every shipped config passes `check`.

use std::path::Path;

use crate::support::*;

#[test]
fn every_shipped_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Catalogue files are checked through the configs that name them.
        if text.contains("[service]") {
            let (code, out, err) = sidekey(&["check", "--config", path.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            assert!(out.contains("config ok"), "{out}");
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn check_prints_the_table_and_exits_64_on_bad_config() {
    let dir = TempDir::new();
    dir.write("ca.pem", sidekey::pki::Ca::new("t").unwrap().cert_pem());
    let good = dir.write("good.toml", &config_text("https://api.example.com", ""));
    let (code, out, _) = sidekey(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("service test-svc"));
    assert!(out.contains("    GET /v1/sandboxes/{id}"), "{out}");
    assert!(
        out.contains(
            "not granted (403 permission_denied): sandbox_sessions:delete, sandbox_sessions:exec"
        ),
        "{out}"
    );

    let bad = dir.write(
        "bad.toml",
        &config_text("https://api.example.com", "").replace("[service]", "[service]\ntypo = 1"),
    );
    let (code, _, err) = sidekey(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(err.contains("unknown field"), "{err}");

    let (code, _, err) = sidekey(&["check", "--config", "/nonexistent/sidekey.toml"]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn explain_exit_codes() {
    let dir = TempDir::new();
    dir.write("ca.pem", sidekey::pki::Ca::new("t").unwrap().cert_pem());
    let cfg = dir.write("s.toml", &config_text("https://api.example.com", ""));
    let cfg = cfg.to_str().unwrap();
    let (code, out, _) = sidekey(&["explain", "--config", cfg, "GET", "/v1/sandboxes/sb_1?x=1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("allowed")
            && out.contains("sandbox_sessions:read")
            && out.contains("GET /v1/sandboxes/{id}"),
        "{out}"
    );
    assert!(
        out.contains("https://api.example.com/v1/sandboxes/sb_1?x=1"),
        "{out}"
    );

    let (code, out, _) = sidekey(&["explain", "--config", cfg, "DELETE", "/v1/sandboxes/sb_1"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("permission_denied") && out.contains("sandbox_sessions:delete"),
        "{out}"
    );

    let (code, out, _) = sidekey(&["explain", "--config", cfg, "GET", "/v2/x"]);
    assert_eq!(code, 1);
    assert!(out.contains("route_not_allowed"), "{out}");

    let (code, out, _) = sidekey(&["explain", "--config", cfg, "GET", "/v1/sandboxes/%2e%2e/x"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("rejected") && out.contains("dot_segment"),
        "{out}"
    );

    let (code, _, _) = sidekey(&["explain", "--config", "/nonexistent.toml", "GET", "/"]);
    assert_eq!(code, 64);
}

#[test]
fn help_shows_examples() {
    for cmd in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["explain", "--help"],
        vec!["demo", "--help"],
    ] {
        let (code, out, _) = sidekey(&cmd);
        assert_eq!(code, 0);
        assert!(out.contains("Example:"), "{cmd:?}: {out}");
    }
}

#[test]
fn deploy_configs_pass_check_and_match_the_catalogue() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = root.join("deploy/kubernetes/base/sidekey.toml");
    let (code, out, err) = sidekey(&["check", "--strict", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let shipped = std::fs::read_to_string(root.join("config/banata-permissions.toml")).unwrap();
    let copy = std::fs::read_to_string(root.join("deploy/kubernetes/base/banata-permissions.toml"))
        .unwrap();
    assert_eq!(
        shipped, copy,
        "deploy/kubernetes/base/banata-permissions.toml drifted from config/"
    );
}

#[test]
fn init_writes_a_config_that_checks_and_never_overwrites() {
    let dir = TempDir::new();
    let d = dir.path().join("conf");
    let args = [
        "init",
        "--service",
        "my-laptop",
        "--allow",
        "sandbox_sessions:create,sandbox_sessions:read",
        "--dir",
        d.to_str().unwrap(),
    ];
    let (code, out, err) = sidekey(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sidekey run --config"), "{out}");
    let cfg = d.join("sidekey.toml");
    let (code, out, _) = sidekey(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("sandbox_sessions:create") && out.contains("    POST /v1/sandboxes"),
        "{out}"
    );
    let (code, _, err) = sidekey(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not overwriting"));
    let (code, _, _) = sidekey(&[
        "init",
        "--service",
        "x",
        "--allow",
        "nope:nope",
        "--dir",
        dir.path().join("other").to_str().unwrap(),
    ]);
    assert_eq!(code, 64);
}

/// `sidekey demo` (the quick start's first command): three mock APIs with different key
/// placements behind one sidekey, each answering with the fingerprint of the key it received.
#[tokio::test]
async fn demo_serves_three_apis_with_their_own_keys() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.trim().strip_prefix("sidekey proxy") {
                let addr = url.trim().trim_start_matches("http://");
                let addr = addr
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr: std::net::SocketAddr = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap()
        .parse()
        .unwrap();
    let banata = request(addr, "POST", "/v1/sandboxes", &[]).await;
    assert_eq!(
        banata.status,
        201,
        "{}",
        String::from_utf8_lossy(&banata.body)
    );
    let llm = request(
        addr,
        "POST",
        "/llm/v1/messages",
        &[("x-api-key", "not-the-key")],
    )
    .await;
    assert_eq!(llm.status, 200, "{}", String::from_utf8_lossy(&llm.body));
    assert_eq!(llm.json()["mock"], "llm");
    let (a, b) = (
        banata.json()["key_fingerprint"].clone(),
        llm.json()["key_fingerprint"].clone(),
    );
    assert!(a.is_string() && b.is_string() && a != b, "{a} {b}");
    assert_ne!(b, sidekey::credential::fingerprint(b"not-the-key"));
    assert_eq!(
        request(addr, "GET", "/llm/v1/models", &[]).await.code(),
        "permission_denied"
    );
    // The third API takes HTTP Basic: sidekey's account and token, never the caller's.
    let sms = request(
        addr,
        "POST",
        "/sms/2010-04-01/Accounts/AC_demo/Messages.json",
        &[("authorization", "Basic QUNfZGVtbzpub3QtdGhlLXRva2Vu")],
    )
    .await;
    assert_eq!(sms.status, 201, "{}", String::from_utf8_lossy(&sms.body));
    assert_eq!(sms.json()["account"], "AC_demo");
    let c = sms.json()["key_fingerprint"].clone();
    assert!(c.is_string() && c != a && c != b, "{c}");
    assert_ne!(c, sidekey::credential::fingerprint(b"not-the-token"));
    // SIGTERM: the demo removes its temp directory on the way out.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
fn init_sets_up_several_apis() {
    let dir = TempDir::new();
    let (code, out, err) = sidekey(&[
        "init",
        "--service",
        "laptop",
        "--allow",
        "sandbox_sessions:read,openai/models:read",
        "--api",
        "openai=https://api.openai.com",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let config = dir.path().join("sidekey.toml");
    let (code, out, err) = sidekey(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("api openai at /openai -> https://api.openai.com"),
        "{out}"
    );
    assert!(out.contains("banata/sandbox_sessions:read"), "{out}");
    assert!(out.contains("openai/models:read"), "{out}");
    let (code, _, err) = sidekey(&[
        "init",
        "--service",
        "x",
        "--allow",
        "a",
        "--api",
        "nope=https://x.example",
        "--dir",
        dir.path().join("other").to_str().unwrap(),
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("no catalogue ships for `nope`"), "{err}");
}

/// `init --api` knows where each shipped API takes its key; `explain` says where it goes
/// (never a value) and shows a path template in front of the forwarded path.
#[test]
fn init_knows_each_shipped_apis_scheme_and_explain_shows_it() {
    let dir = TempDir::new();
    let (code, out, err) = sidekey(&[
        "init",
        "--service",
        "laptop",
        "--allow",
        "sandbox_sessions:read,twilio/messages:send,telegram/bot:send,datadog/validate,maps/geocode",
        "--api",
        "twilio=https://api.twilio.com",
        "--api",
        "telegram=https://api.telegram.org",
        "--api",
        "datadog=https://api.datadoghq.com",
        "--api",
        "maps=https://maps.googleapis.com",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let config = dir.path().join("sidekey.toml");
    let cfg = config.to_str().unwrap();
    let (code, out, err) = sidekey(&["check", "--config", cfg]);
    assert_eq!(code, 0, "{out}{err}");
    for (method, target, want) in [
        (
            "POST",
            "/twilio/2010-04-01/Accounts/AC1/Messages.json",
            "credential: authorization: Basic",
        ),
        (
            "POST",
            "/telegram/sendMessage",
            "credential: path /bot{key} | /file/bot{key}",
        ),
        (
            "POST",
            "/telegram/bot123:placeholder/sendMessage",
            "forwarded:  https://api.telegram.org/bot{key}/sendMessage",
        ),
        (
            "GET",
            "/datadog/api/v1/validate",
            "credential: headers dd-api-key, dd-application-key",
        ),
        (
            "GET",
            "/maps/maps/api/geocode/json?address=x",
            "credential: query param key",
        ),
    ] {
        let (code, out, err) = sidekey(&["explain", "--config", cfg, method, target]);
        assert_eq!(code, 0, "{target}: {out}{err}");
        assert!(out.contains(want), "{target}: {out}");
    }
}

#[test]
fn ca_init_env_and_check_for_the_forward_proxy() {
    let dir = TempDir::new();
    dir.write("k", "sk_x");
    let cfg = dir.write(
        "s.toml",
        "[forward_proxy]\nca_cert_file = \"ca/ca.crt\"\nca_key_file = \"ca/ca.key\"\n[api.openai]\nurl = \"https://api.openai.com\"\npath_prefix = \"/openai\"\ncredential = { file = \"k\" }\npermissions = { \"models\" = [\"GET /v1/models\"] }\n[service]\nname = \"s\"\nallow = [\"openai/models\"]\n",
    );
    let ca = dir.path().join("ca");
    let (code, out, err) = sidekey(&[
        "ca",
        "init",
        "--dir",
        ca.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("name constraints: api.openai.com"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let key_before = std::fs::read(ca.join("ca.key")).unwrap();
    // Never overwrites.
    let (code, _, err) = sidekey(&[
        "ca",
        "init",
        "--dir",
        ca.to_str().unwrap(),
        "--host",
        "x.test",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(ca.join("ca.key")).unwrap(), key_before);
    let (code, out, _) = sidekey(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("forward proxy 127.0.0.1:3128"), "{out}");
    assert!(
        out.contains("intercepts api.openai.com:443 (api openai)"),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");
    let (code, out, _) = sidekey(&["env", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "NODE_USE_ENV_PROXY",
    ] {
        assert!(out.contains(&format!("export {var}=")), "{var}: {out}");
    }
    assert!(
        out.contains("export HTTPS_PROXY='http://127.0.0.1:3128'"),
        "{out}"
    );
    let bundle = std::fs::read_to_string(ca.join("bundle.pem")).unwrap();
    assert!(bundle.ends_with(&std::fs::read_to_string(ca.join("ca.crt")).unwrap()));
    // The CA key never shows in what the commands print.
    let key_text = String::from_utf8(key_before).unwrap();
    let body: String = key_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!out.contains(&body[..20]));
}

/// The shipped GitHub catalogue (generated from GitHub's OpenAPI description): every
/// permission granted, `check --strict` finds nothing to act on, and `explain` names the
/// permission of a list endpoint and of the alias its `Link` pages use.
#[test]
fn the_generated_github_catalogue_round_trips_through_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalogue = root.join("config/catalogues/github.toml");
    let text = std::fs::read_to_string(&catalogue).unwrap();
    assert!(
        text.contains("@octokit/openapi 23.0.2"),
        "the header names the spec version"
    );
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let perms: Vec<String> = parsed["permissions"]
        .as_table()
        .unwrap()
        .keys()
        .map(|p| format!("\"github/{p}\""))
        .collect();
    assert!(perms.len() > 80, "{}", perms.len());
    let dir = TempDir::new();
    dir.write("k", "ghp_x");
    let cfg = dir.write(
        "s.toml",
        &format!(
            "[api.github]\nurl = \"https://api.github.com\"\npath_prefix = \"/github\"\npermissions_file = \"{}\"\ncredential = {{ file = \"k\", prefix = \"token \" }}\n[service]\nname = \"gh\"\nallow = [{}]\n",
            catalogue.display(),
            perms.join(", ")
        ),
    );
    let started = std::time::Instant::now();
    let (code, out, err) = sidekey(&["check", "--strict", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("error:"), "{out}");
    // Debug build in tests; the release figure is in BENCHMARKS.md.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    for (target, route) in [
        ("/github/repos/o/r/pulls", "GET /repos/{owner}/{repo}/pulls"),
        (
            "/github/repositories/42/pulls?page=2",
            "GET /repositories/{repository_id}/pulls",
        ),
    ] {
        let (code, out, _) =
            sidekey(&["explain", "--config", cfg.to_str().unwrap(), "GET", target]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("permission: github/pulls:read"), "{out}");
        assert!(out.contains(&format!("route:      {route}")), "{out}");
    }
}

#[test]
fn catalogue_import_and_openapi_drift_through_the_binary() {
    let dir = TempDir::new();
    let spec = dir.write(
        "api.json",
        r#"{"openapi": "3.0.0", "info": {"title": "Things", "version": "7"}, "servers": [{"url": "https://api.things.test/v1"}],
            "paths": {"/things": {"get": {"operationId": "listThings", "tags": ["things"]}},
                      "/things/{id}": {"get": {"operationId": "getThing", "tags": ["things"]},
                                       "delete": {"operationId": "deleteThing", "tags": ["things"]}}}}"#,
    );
    let (code, out, err) = sidekey(&["catalogue", "import", spec.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"things:read\" = [\n  \"GET /v1/things\",  # listThings\n"),
        "{out}"
    );
    let (_, again, _) = sidekey(&["catalogue", "import", spec.to_str().unwrap()]);
    assert_eq!(out, again, "the same spec gives byte-identical output");
    // A catalogue with one removed endpoint and missing one new operation.
    dir.write("k", "x");
    let cfg = dir.write(
        "s.toml",
        "[upstream]\nurl = \"https://api.things.test\"\n[credential]\nfile = \"k\"\n[service]\nname = \"s\"\nallow = [\"things:read\"]\n[permissions]\n\"things:read\" = [\"GET /v1/things\", \"GET /v1/things/{id}\", \"GET /v1/widgets\"]\n",
    );
    let args = [
        "check",
        "--config",
        cfg.to_str().unwrap(),
        "--openapi",
        spec.to_str().unwrap(),
    ];
    let (code, out, _) = sidekey(&args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: openapi_unknown_route: `GET /v1/widgets` (things:read) matches no operation in api.json"), "{out}");
    assert!(out.contains("warning: openapi_uncovered_operation: operation `deleteThing` (`DELETE /v1/things/{id}`)"), "{out}");
    let mut strict = args.to_vec();
    strict.push("--strict");
    let (code, _, _) = sidekey(&strict);
    assert_eq!(code, 1);
    // Bad input: the JSON pointer of the problem, exit 64.
    let bad = dir.write(
        "bad.json",
        r#"{"openapi": "3.0.0", "paths": {"/x": {"get": {"tags": "no"}}}}"#,
    );
    let (code, _, err) = sidekey(&["catalogue", "import", bad.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("at /paths/~1x/get/tags"), "{err}");
}

#[test]
fn fingerprint_matches_what_credential_shows() {
    let dir = TempDir::new();
    let key = dir.write("k", "sk_live_fingerprint_0001\n");
    let (code, out, _) = sidekey(&["fingerprint", key.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        sidekey::credential::fingerprint(b"sk_live_fingerprint_0001")
    );
    assert!(!out.contains("sk_live"));
    let empty = dir.write("e", "  \n");
    let (code, _, err) = sidekey(&["fingerprint", empty.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn the_prometheus_rule_manifest_carries_the_same_alerts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    let read = |f: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join(f)).unwrap()).unwrap()
    };
    let plain = read("sidekey-alerts.yml");
    let manifest = read("prometheus-rule.yaml");
    assert_eq!(manifest["kind"], "PrometheusRule");
    assert_eq!(manifest["spec"]["groups"], plain["groups"]);
    let alerts = plain["groups"][0]["rules"].as_sequence().unwrap();
    assert_eq!(alerts.len(), 11);
    for a in alerts {
        assert!(
            a["annotations"]["runbook"]
                .as_str()
                .is_some_and(|r| r.len() > 40),
            "{a:?}"
        );
    }
}

#[test]
fn check_validates_and_prints_the_shared_limiter() {
    let dir = TempDir::new();
    dir.write("ca.pem", sidekey::pki::Ca::new("t").unwrap().cert_pem());
    let shared =
        "[limits.shared]\nredis_url = \"rediss://redis.sidekey.svc:6380/1\"\non_error = \"deny\"\n";
    let cfg = dir.write("s.toml", &config_text("https://api.example.com", shared));
    let (code, out, err) = sidekey(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rate limits shared in Redis at redis.sidekey.svc:6380 over TLS (key prefix \"sidekey:\", timeout 20ms, on error deny; max_concurrent stays per replica)"),
        "{out}"
    );
    assert!(out.contains("no caller has a rate"), "{out}");
    let with_password = shared.replace("rediss://", "rediss://user:s3cr3t-pw@");
    let cfg = dir.write(
        "p.toml",
        &config_text("https://api.example.com", &with_password),
    );
    let (code, out, err) = sidekey(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains("limits.shared.redis_url") && err.contains("password_file"),
        "{err}"
    );
    assert!(!out.contains("s3cr3t") && !err.contains("s3cr3t"), "{err}");
}
