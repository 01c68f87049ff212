//! AWS SigV4: what reaches the upstream. The caller's own signature (headers and presigned
//! query parameters) never does; exactly one signature made with the real key id, for the
//! configured region and service, over the upstream's Host, does. Bodies: S3 streams with
//! UNSIGNED-PAYLOAD or the caller's declared hash; other services get the body's hash, read
//! up to `max_signed_body` (413 past it, chunked too, nothing sent); chunk-signed uploads get
//! 400. The signature itself is checked by an independent signer (botocore) in
//! `tests/clients/test_sigv4.py`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use sha2::{Digest, Sha256};
use sidekey::mock::MockUpstream;
use sidekey::pki::Ca;

use crate::support::*;

const KEY_ID: &str = "AKIDREAL0001";
const SECRET: &str = "real/secret+key0001";
const SESSION: &str = "real-session-token-0001";
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

async fn start() -> (Ca, MockUpstream, MockUpstream, TestProxy) {
    start_with(true).await
}

async fn start_with(secret: bool) -> (Ca, MockUpstream, MockUpstream, TestProxy) {
    let ca = Ca::new("test CA").unwrap();
    let ok: sidekey::mock::Handler = std::sync::Arc::new(|_req| {
        Box::pin(async { sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({})) })
    });
    let s3 = MockUpstream::start(&ca, ok.clone()).await.unwrap();
    let ddb = MockUpstream::start(&ca, ok).await.unwrap();
    let dir = TempDir::new();
    dir.write("ca.pem", ca.cert_pem());
    std::fs::create_dir_all(dir.path().join("aws")).unwrap();
    dir.write("aws/id", KEY_ID);
    if secret {
        dir.write("aws/secret", SECRET);
    }
    dir.write("aws/session", SESSION);
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"

[api.s3]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/s3"
[api.s3.credential]
scheme = "aws_sigv4"
region = "eu-west-1"
service = "s3"
access_key_id_file = "aws/id"
secret_access_key_file = "aws/secret"
session_token_file = "aws/session"
[api.s3.permissions]
"objects:read" = ["GET /{{bucket}}/{{*key}}", "GET /{{bucket}}"]
"objects:write" = ["PUT /{{bucket}}/{{*key}}"]

[api.ddb]
url = "{}"
ca_file = "ca.pem"
path_prefix = "/ddb"
credential = {{ scheme = "aws_sigv4", region = "us-east-1", service = "dynamodb", access_key_id_file = "aws/id", secret_access_key_file = "aws/secret", max_signed_body = "1KiB" }}
[api.ddb.permissions]
"items" = ["POST /"]

[service]
name = "app"
allow = ["s3/objects:read", "s3/objects:write", "ddb/items"]
[runtime]
shutdown_idle = "50ms"
[reload]
interval = "30s"
debounce = "50ms"
"#,
        s3.url(),
        ddb.url()
    );
    let p = TestProxy::start_in(dir, &config).await;
    (ca, s3, ddb, p)
}

fn one<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    let all: Vec<_> = h.get_all(name).iter().collect();
    assert_eq!(all.len(), 1, "{name}: {all:?}");
    all[0].to_str().unwrap()
}

#[tokio::test]
async fn the_callers_signature_goes_and_ours_covers_what_is_sent() {
    let (_ca, s3, _ddb, p) = start().await;
    let presigned = "/s3/bucket/a%20b.txt?versionId=3&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=PLACEHOLDER%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=00ff&X-Amz-SignedHeaders=host&X-Amz-Expires=60";
    let r = request(
        p.addr,
        "GET",
        presigned,
        &[
            ("authorization", "AWS4-HMAC-SHA256 Credential=PLACEHOLDER/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00"),
            ("x-amz-date", "20000101T000000Z"),
            ("x-amz-security-token", "caller-token"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = &s3.requests()[0];
    // The path as checked, byte for byte; the caller's presigning parameters gone.
    assert_eq!(seen.target, "/bucket/a%20b.txt?versionId=3");
    let auth = one(&seen.headers, "authorization");
    let date = one(&seen.headers, "x-amz-date");
    assert_ne!(date, "20000101T000000Z");
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={KEY_ID}/{}/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature=",
            &date[..8]
        )),
        "{auth}"
    );
    assert_eq!(one(&seen.headers, "x-amz-security-token"), SESSION);
    assert_eq!(one(&seen.headers, "x-amz-content-sha256"), EMPTY);
    // HTTP/2 carries the signed Host as `:authority`; no other `host` travels with it.
    assert!(seen.version == http::Version::HTTP_2 && seen.headers.get("host").is_none());
    for v in seen.headers.values() {
        let v = v.to_str().unwrap_or_default();
        assert!(!v.contains(SECRET) && !v.contains("PLACEHOLDER") && !v.contains("caller-token"));
    }
    p.stop().await;
}

#[tokio::test]
async fn bodies_stream_unsigned_for_s3_and_are_hashed_elsewhere_within_the_bound() {
    let (_ca, s3, ddb, p) = start().await;
    // S3: no declared hash -> UNSIGNED-PAYLOAD; a declared hash or trailer mode is kept.
    let r = request(p.addr, "PUT", "/s3/bucket/k", &[("content-length", "0")]).await;
    assert_eq!(r.status, 200);
    let body = Bytes::from_static(b"hello object");
    let req = http::Request::put("/s3/bucket/k2")
        .header("host", "localhost")
        .body(Full::new(body.clone()))
        .unwrap();
    assert_eq!(send(p.addr, req).await.status, 200);
    let hash = sigv4_hex(&Sha256::digest(&body));
    let req = http::Request::put("/s3/bucket/k3")
        .header("host", "localhost")
        .header("x-amz-content-sha256", &hash)
        .body(Full::new(body.clone()))
        .unwrap();
    assert_eq!(send(p.addr, req).await.status, 200);
    let seen = s3.requests();
    assert_eq!(one(&seen[0].headers, "x-amz-content-sha256"), EMPTY);
    assert_eq!(
        one(&seen[1].headers, "x-amz-content-sha256"),
        "UNSIGNED-PAYLOAD"
    );
    assert_eq!(one(&seen[2].headers, "x-amz-content-sha256"), hash);

    // A chunk-signed upload cannot be re-signed: 400, nothing sent.
    let req = http::Request::put("/s3/bucket/k4")
        .header("host", "localhost")
        .header("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
        .body(Full::new(body.clone()))
        .unwrap();
    let r = send(p.addr, req).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (400, "aws_chunk_signatures_unsupported")
    );
    assert_eq!(s3.requests().len(), 3);

    // DynamoDB: the body's own hash; the caller's UNSIGNED-PAYLOAD is not honoured.
    let item = Bytes::from_static(br#"{"TableName":"t","Item":{}}"#);
    let req = http::Request::post("/ddb/")
        .header("host", "localhost")
        .header("x-amz-target", "DynamoDB_20120810.PutItem")
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .body(Full::new(item.clone()))
        .unwrap();
    assert_eq!(send(p.addr, req).await.status, 200);
    let seen = &ddb.requests()[0];
    assert_eq!(
        one(&seen.headers, "x-amz-content-sha256"),
        sigv4_hex(&Sha256::digest(&item))
    );
    assert!(one(&seen.headers, "authorization").contains("/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-target,"));
    assert!(seen.headers.get("x-amz-security-token").is_none());

    // Over max_signed_body (1 KiB): 413, declared or chunked, nothing sent.
    let big = Bytes::from(vec![b'x'; 2048]);
    let req = http::Request::post("/ddb/")
        .header("host", "localhost")
        .body(Full::new(big))
        .unwrap();
    let r = send(p.addr, req).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (413, "body_too_large_to_sign")
    );
    let chunk = "x".repeat(1000);
    let raw_req = format!(
        "POST /ddb/ HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n{chunk}\r\n3e8\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw(p.addr, raw_req.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large_to_sign"), "{answer}");
    assert_eq!(ddb.requests().len(), 1);
    p.stop().await;
}

#[tokio::test]
async fn the_fingerprint_is_the_secret_keys_and_no_secret_fails_closed() {
    let (_ca, _s3, _ddb, p) = start().await;
    let body = reqwest_like_get(p.admin, "/credential").await;
    assert!(
        body.contains(&sidekey::credential::fingerprint(SECRET.as_bytes())),
        "{body}"
    );
    assert!(body.contains("aws_sigv4"), "{body}");
    assert!(!body.contains(SECRET) && !body.contains(SESSION));
    p.stop().await;

    let (_ca, s3, _ddb, p) = start_with(false).await;
    let r = get(p.addr, "/s3/bucket/k").await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "credential_unavailable")
    );
    assert!(s3.requests().is_empty());
    p.stop().await;
}

async fn reqwest_like_get(addr: std::net::SocketAddr, path: &str) -> String {
    let r = get(addr, path).await;
    String::from_utf8_lossy(&r.body).into_owned()
}

fn sigv4_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One mock as STS (AssumeRoleWithWebIdentity, a new key pair per call) and as the API, which
/// answers DynamoDB's `ExpiredTokenException` to the first pair it sees used.
#[tokio::test]
async fn a_role_mints_at_sts_and_an_expired_token_answer_forces_a_refresh() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let ca = Ca::new("test CA").unwrap();
    let minted = Arc::new(AtomicUsize::new(0));
    let used: Arc<Mutex<Vec<String>>> = Arc::default();
    let (m, u) = (minted.clone(), used.clone());
    let handler: sidekey::mock::Handler = Arc::new(move |req| {
        let (m, u) = (m.clone(), u.clone());
        Box::pin(async move {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            let Some(auth) = auth else {
                let body = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let form = String::from_utf8_lossy(&body).into_owned();
                assert!(form.contains("Action=AssumeRoleWithWebIdentity"), "{form}");
                assert!(
                    form.contains("WebIdentityToken=web.identity.token"),
                    "{form}"
                );
                assert!(
                    form.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fapp"),
                    "{form}"
                );
                let n = m.fetch_add(1, Ordering::SeqCst) + 1;
                let xml = format!(
                    "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                     <AccessKeyId>ASIAROLE{n}</AccessKeyId><SecretAccessKey>role-secret-{n}</SecretAccessKey>\
                     <SessionToken>role-session-{n}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
                     </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
                );
                let mut resp = sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({}));
                *resp.body_mut() = http_body_util::BodyExt::boxed(
                    http_body_util::BodyExt::map_err(Full::new(Bytes::from(xml)), |never| {
                        match never {}
                    }),
                );
                resp.headers_mut()
                    .insert("content-type", "text/xml".parse().unwrap());
                return resp;
            };
            let id = auth
                .split("Credential=")
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned();
            u.lock().unwrap().push(id.clone());
            if id == "ASIAROLE1" {
                let mut resp = sidekey::mock::json(
                    http::StatusCode::BAD_REQUEST,
                    &serde_json::json!({"message": "The security token included in the request is expired"}),
                );
                resp.headers_mut().insert(
                    "x-amzn-errortype",
                    "ExpiredTokenException:".parse().unwrap(),
                );
                return resp;
            }
            sidekey::mock::json(http::StatusCode::OK, &serde_json::json!({"TableNames": []}))
        })
    });
    let mock = MockUpstream::start(&ca, handler).await.unwrap();
    let dir = TempDir::new();
    dir.write("ca.pem", ca.cert_pem());
    dir.write("token", "web.identity.token");
    let config = format!(
        r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[api.ddb]
url = "{url}"
ca_file = "ca.pem"
path_prefix = "/ddb"
credential = {{ scheme = "aws_sigv4", region = "us-east-1", service = "dynamodb", role_arn = "arn:aws:iam::1:role/app", web_identity_token_file = "token", sts_url = "{url}/", sts_ca_file = "ca.pem" }}
[api.ddb.permissions]
"items" = ["POST /"]
[service]
name = "app"
allow = ["ddb/items"]
[runtime]
shutdown_idle = "50ms"
[reload]
interval = "30s"
debounce = "50ms"
"#,
        url = mock.url()
    );
    let p = TestProxy::start_in(dir, &config).await;
    let list = || async {
        let req = http::Request::post("/ddb/")
            .header("host", "localhost")
            .header("x-amz-target", "DynamoDB_20120810.ListTables")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        send(p.addr, req).await.status.as_u16()
    };
    assert!(eventually(Duration::from_secs(10), || async { list().await != 503 }).await);
    // The first pair is refused as expired (passed back as it is), which forces a refresh.
    assert!(eventually(Duration::from_secs(10), || async { list().await == 200 }).await);
    assert_eq!(minted.load(Ordering::SeqCst), 2);
    let used = used.lock().unwrap().clone();
    assert_eq!(used.first().map(String::as_str), Some("ASIAROLE1"));
    assert_eq!(used.last().map(String::as_str), Some("ASIAROLE2"));
    p.stop().await;
}
