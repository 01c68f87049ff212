//! `[limits.shared]` when Redis asks for a password, speaks TLS, or is not there at all.

use std::time::Duration;

use http::StatusCode;
use sidekey::pki::Ca;

use super::redis::{RedisServer, TlsFiles};
use super::{FREE, Gateway, LIMITED, call, client, limiter, metric};
use crate::support::*;

/// The Redis password is hot-reloaded: a new one reconnects, an unreadable one keeps the
/// last good connection (and says so), a wrong one makes the fallback decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_rotates_without_a_restart() {
    let up = Upstream::banata().await;
    let gw = Gateway::new(&up);
    let mut redis = RedisServer::start(gw.dir.path(), Some("pw-one"), None).await;
    let file = gw.dir.write("secret/redis-password", "pw-one\n");
    let shared = format!(
        "redis_url = \"{}\"\npassword_file = \"secret/redis-password\"",
        redis.url()
    );
    let run = gw.start(&up, "rate = \"100/s\"", &shared).await;
    let mut s = client(run.proxy, gw.ca.cert_pem()).await;
    assert_eq!(call(&mut s, LIMITED).await.0, StatusCode::OK);
    assert_eq!(limiter(run.admin).await["state"], "up");
    let log = |needle: &'static str| {
        let path = run.stdout.clone();
        move || {
            let found = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .contains(needle);
            async move { found }
        }
    };

    // Rotate: Redis takes the new password and every old connection is cut (live ones
    // would stay authenticated), then the file changes; sidekey reconnects with it.
    redis.set_password("pw-two").await;
    redis.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    std::fs::write(&file, "pw-two\n").unwrap();
    assert!(eventually(Duration::from_secs(5), log("Redis password changed")).await);
    assert_eq!(call(&mut s, LIMITED).await.0, StatusCode::OK);
    assert_eq!(limiter(run.admin).await["state"], "up");
    assert_eq!(
        metric(
            run.admin,
            "sidekey_shared_limit_errors_total{reason=\"auth\"}"
        )
        .await,
        0.0
    );

    // An empty file is refused: the last good connection stays.
    std::fs::write(&file, "").unwrap();
    assert!(eventually(Duration::from_secs(5), log("Redis password update refused")).await);
    assert_eq!(call(&mut s, LIMITED).await.0, StatusCode::OK);
    assert_eq!(limiter(run.admin).await["state"], "up");
    assert_eq!(
        metric(
            run.admin,
            "sidekey_shared_limit_errors_total{reason=\"password_file\"}"
        )
        .await,
        1.0
    );

    // A wrong password is used as given: Redis refuses it, the fallback decides.
    std::fs::write(&file, "pw-wrong").unwrap();
    let (addr, admin, pem) = (run.proxy, run.admin, gw.ca.cert_pem().to_owned());
    let refused = eventually(Duration::from_secs(5), || {
        let pem = pem.clone();
        async move {
            let (status, ..) = call(&mut client(addr, &pem).await, LIMITED).await;
            status == StatusCode::OK && limiter(admin).await["last_error"] == "auth"
        }
    })
    .await;
    assert!(refused, "{}", limiter(admin).await);
    assert!(metric(admin, "sidekey_shared_limit_errors_total{reason=\"auth\"}").await > 0.0);
    let log = std::fs::read_to_string(&run.stdout).unwrap();
    for secret in ["pw-one", "pw-two", "pw-wrong"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// `rediss://` verifies the server against `ca_file`; without it (webpki roots) the same
/// server is not trusted and the fallback decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_is_verified_against_the_given_ca() {
    let up = Upstream::banata().await;
    let gw = Gateway::new(&up);
    let redis_ca = Ca::new("redis CA").unwrap();
    let leaf = redis_ca.leaf(&["localhost", "127.0.0.1"]).unwrap();
    let tls = TlsFiles {
        cert: gw.dir.write("redis.crt", &leaf.cert_pem),
        key: gw.dir.write("redis.key", &leaf.key_pem),
        ca: gw.dir.write("redis-ca.pem", redis_ca.cert_pem()),
    };
    let redis = RedisServer::start(gw.dir.path(), None, Some(tls)).await;
    assert!(redis.url().starts_with("rediss://"));
    let trusted = format!(
        "redis_url = \"{}\"\nca_file = \"redis-ca.pem\"",
        redis.url()
    );
    let run = gw.start(&up, "rate = \"100/s\"", &trusted).await;
    let mut s = client(run.proxy, gw.ca.cert_pem()).await;
    assert_eq!(call(&mut s, LIMITED).await.0, StatusCode::OK);
    let status = limiter(run.admin).await;
    assert_eq!(
        (status["state"].as_str(), status["tls"].as_bool()),
        (Some("up"), Some(true)),
        "{status}"
    );
    drop(run);

    let untrusted = format!("redis_url = \"{}\"", redis.url());
    let run = gw.start(&up, "rate = \"100/s\"", &untrusted).await;
    let mut s = client(run.proxy, gw.ca.cert_pem()).await;
    assert_eq!(
        call(&mut s, LIMITED).await.0,
        StatusCode::OK,
        "local fallback"
    );
    let status = limiter(run.admin).await;
    assert_eq!(status["healthy"], false, "{status}");
}

/// `on_error = "deny"` with no Redis at all: 429 `rate_limited` with its reason, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_deny_refuses_while_redis_cannot_decide() {
    let up = Upstream::banata().await;
    let gw = Gateway::new(&up);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shared = format!("redis_url = \"redis://127.0.0.1:{port}\"\non_error = \"deny\"");
    let run = gw.start(&up, "rate = \"100/s\"", &shared).await;
    let mut s = client(run.proxy, gw.ca.cert_pem()).await;
    for _ in 0..5 {
        let (status, reason, took) = call(&mut s, LIMITED).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reason, "shared_limiter_unavailable");
        assert!(took < Duration::from_millis(20 + 50), "{took:?}");
    }
    // Callers without a rate are not held up by the limiter.
    assert_eq!(call(&mut s, FREE).await.0, StatusCode::OK);
    assert_eq!(get(run.admin, "/readyz").await.status, StatusCode::OK);
    assert!(
        metric(
            run.admin,
            "sidekey_shared_limit_decisions_total{result=\"fallback_limited\"}"
        )
        .await
            >= 5.0
    );
}
