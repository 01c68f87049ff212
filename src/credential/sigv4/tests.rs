use std::time::{Duration, SystemTime};

use super::*;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn signer(region: &str, service: &str, key_id: &str, secret: &str) -> Signer {
    let settings = Settings {
        region: region.into(),
        service: service.into(),
        payload: Payload::Signed,
        max_signed_body: DEFAULT_MAX_SIGNED_BODY,
        role: None,
    };
    Signer::new(
        Arc::new(settings),
        key_id.as_bytes(),
        secret.as_bytes(),
        None,
    )
    .unwrap()
}

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

/// `get-vanilla` of AWS's SigV4 test suite.
#[test]
fn aws_test_suite_get_vanilla() {
    let s = signer(
        "us-east-1",
        "service",
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    );
    let stamp = Stamp::of(at(1_440_938_160));
    assert_eq!(stamp.full, "20150830T123600Z");
    let h = map(&[
        ("host", "example.amazonaws.com"),
        ("x-amz-date", "20150830T123600Z"),
    ]);
    let (headers, signed) = canonical::headers(&h, |_| true);
    assert_eq!(signed, "host;x-amz-date");
    let hash = canonical::request_hash("GET", "/", "", &headers, &signed, EMPTY_SHA256);
    assert_eq!(
        s.signature(&stamp, &hash),
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
}

/// `get-header-key-duplicate` of the same suite: values of one name joined with `,`.
#[test]
fn aws_test_suite_duplicate_header() {
    let s = signer(
        "us-east-1",
        "service",
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    );
    let stamp = Stamp::of(at(1_440_938_160));
    let h = map(&[
        ("host", "example.amazonaws.com"),
        ("my-header1", "value2"),
        ("my-header1", "value2"),
        ("my-header1", "value1"),
        ("x-amz-date", "20150830T123600Z"),
    ]);
    let (headers, signed) = canonical::headers(&h, |_| true);
    let hash = canonical::request_hash("GET", "/", "", &headers, &signed, EMPTY_SHA256);
    assert_eq!(
        s.signature(&stamp, &hash),
        "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"
    );
}

/// The S3 documentation's GET Object example (signed `range`, empty payload hash).
#[test]
fn s3_documentation_get_object() {
    let s = signer(
        "us-east-1",
        "s3",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    );
    let stamp = Stamp::of(at(1_369_353_600));
    assert_eq!(stamp.full, "20130524T000000Z");
    let h = map(&[
        ("host", "examplebucket.s3.amazonaws.com"),
        ("range", "bytes=0-9"),
        ("x-amz-content-sha256", EMPTY_SHA256),
        ("x-amz-date", "20130524T000000Z"),
    ]);
    let (headers, signed) = canonical::headers(&h, |_| true);
    let uri = canonical::uri("/test.txt", true);
    let hash = canonical::request_hash("GET", &uri, "", &headers, &signed, EMPTY_SHA256);
    assert_eq!(
        s.signature(&stamp, &hash),
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    );
}

#[test]
fn canonical_uri_s3_once_others_twice() {
    assert_eq!(canonical::uri("/b/a%20b/c@d", true), "/b/a%20b/c%40d");
    assert_eq!(canonical::uri("/b//x/./y", true), "/b//x/./y");
    assert_eq!(canonical::uri("", true), "/");
    assert_eq!(canonical::uri("/f/arn%3Aaws/x", false), "/f/arn%253Aaws/x");
    assert_eq!(canonical::uri("/a//b/./c/", false), "/a/b/c/");
    assert_eq!(canonical::uri("/", false), "/");
}

#[test]
fn canonical_query_sorted_and_encoded() {
    assert_eq!(canonical::query(None), "");
    assert_eq!(
        canonical::query(Some("b=2&a=x%20y&a=1&c&d=e+f")),
        "a=1&a=x%20y&b=2&c=&d=e%2Bf"
    );
}

#[test]
fn presigned_parameters_are_removed_others_kept() {
    assert_eq!(canonical::without_presigned("a=1&b=%2F"), None);
    assert_eq!(
        canonical::without_presigned(
            "X-Amz-Algorithm=AWS4&a=1&X-Amz-Credential=AK%2F&x-amz-signature=ff&X-Amz-SignedHeaders=host&X%2DAmz%2DDate=1&X-Amz-Expires=60&X-Amz-Security-Token=t&b=%2F"
        ),
        Some("a=1&b=%2F".into())
    );
    // SigV2 (boto3's default presigning for S3): only with AWSAccessKeyId present.
    assert_eq!(
        canonical::without_presigned("AWSAccessKeyId=AK&Signature=x%3D&Expires=1&versionId=2"),
        Some("versionId=2".into())
    );
    assert_eq!(
        canonical::without_presigned("Signature=kept&Expires=1"),
        None
    );
}

#[test]
fn sign_strips_presigning_and_signs_what_is_sent() {
    let s = signer("eu-west-1", "s3", "AKIDREAL", "real-secret");
    let mut req = http::Request::builder()
        .method("PUT")
        .uri("/bucket/key?X-Amz-Signature=abc&partNumber=1")
        .header("host", "s3.eu-west-1.amazonaws.com")
        .header("content-type", "text/plain")
        .header("x-amz-meta-a", "  one   two ")
        .header("user-agent", "boto3")
        .body(())
        .unwrap();
    let (mut parts, ()) = std::mem::take(&mut req).into_parts();
    let plan = s.payload(&mut parts.headers, true).unwrap();
    assert_eq!(plan, Plan::Hash(DEFAULT_MAX_SIGNED_BODY));
    parts
        .headers
        .insert(CONTENT_SHA256, HeaderValue::from_static(EMPTY_SHA256));
    s.sign(&mut parts, at(1_440_938_160)).unwrap();
    assert_eq!(parts.uri, "/bucket/key?partNumber=1");
    let auth = parts.headers[http::header::AUTHORIZATION].to_str().unwrap();
    assert!(auth.starts_with(
        "AWS4-HMAC-SHA256 Credential=AKIDREAL/20150830/eu-west-1/s3/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-a, Signature="
    ), "{auth}");
    assert!(parts.headers[http::header::AUTHORIZATION].is_sensitive());
    assert_eq!(parts.headers["x-amz-date"], "20150830T123600Z");
    assert!(!format!("{s:?}").contains("real-secret"));
}

#[test]
fn payload_plans() {
    let mut s3 = signer("eu-west-1", "s3", "A", "S");
    Arc::get_mut(&mut s3.settings).unwrap().payload = Payload::Unsigned;
    let other = signer("eu-west-1", "dynamodb", "A", "S");
    let value = |h: &HeaderMap| {
        h.get(&CONTENT_SHA256)
            .map(|v| v.to_str().unwrap().to_owned())
    };

    let mut h = map(&[("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")]);
    assert_eq!(s3.payload(&mut h, true), Err(SignedChunks));
    let mut h = map(&[("x-amz-content-sha256", UNSIGNED_TRAILER)]);
    assert_eq!(s3.payload(&mut h, true), Ok(Plan::Ready));
    assert_eq!(value(&h).as_deref(), Some(UNSIGNED_TRAILER));
    let mut h = HeaderMap::new();
    assert_eq!(s3.payload(&mut h, true), Ok(Plan::Ready));
    assert_eq!(value(&h).as_deref(), Some(UNSIGNED));
    // Not S3: an unsigned declaration is not honoured, the body is hashed.
    let mut h = map(&[("x-amz-content-sha256", UNSIGNED)]);
    assert_eq!(
        other.payload(&mut h, true),
        Ok(Plan::Hash(DEFAULT_MAX_SIGNED_BODY))
    );
    assert_eq!(value(&h), None);
    let mut h = HeaderMap::new();
    assert_eq!(other.payload(&mut h, false), Ok(Plan::Ready));
    assert_eq!(value(&h).as_deref(), Some(EMPTY_SHA256));
    let mut h = map(&[("x-amz-content-sha256", EMPTY_SHA256)]);
    assert_eq!(other.payload(&mut h, true), Ok(Plan::Ready));
}

#[test]
fn the_day_key_is_reused_within_a_day_and_rederived_after() {
    let s = signer(
        "us-east-1",
        "service",
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    );
    let a = s.signature(&Stamp::of(at(1_440_938_160)), "x");
    let cached = s.signature(&Stamp::of(at(1_440_938_160)), "x");
    assert_eq!(a, cached);
    let next_day = s.signature(&Stamp::of(at(1_440_938_160 + 86_400)), "x");
    assert_ne!(a, next_day);
    let back = s.signature(&Stamp::of(at(1_440_938_160)), "x");
    assert_eq!(a, back);
}
