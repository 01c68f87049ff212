//! SigV4's canonical forms (pure): the canonical URI (S3: the path's bytes encoded once, never
//! normalised; every other service: empty and `.` segments dropped, then the path as sent
//! encoded once more), the canonical query (pairs decoded, encoded, sorted), the canonical
//! headers, and the string the signature is computed over.
//!
//! AWS's reference: "Create a canonical request for Signature Version 4"; checked here on the
//! AWS test-suite vectors and, in `tests/clients`, by botocore verifying what sidekey sends.

use http::{HeaderMap, HeaderName};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use sha2::{Digest, Sha256};

/// Everything but RFC 3986's unreserved characters (SigV4's `UriEncode`).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same, keeping `/` (a path's separators).
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// Query parameters of a presigned URL: a caller's own signature, never forwarded.
const PRESIGNED: [&str; 7] = [
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-signature",
    "x-amz-signedheaders",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-expires",
];

/// A presigned URL's SigV2 parameters (S3's and the query APIs' older form), removed when
/// `AWSAccessKeyId` shows the query is signed that way.
const PRESIGNED_V2: [&str; 5] = [
    "awsaccesskeyid",
    "signature",
    "expires",
    "signaturemethod",
    "signatureversion",
];

/// `query` without a caller's presigning parameters (names compared decoded, any case); the
/// other pairs keep their bytes and order. `None`: nothing to remove.
pub fn without_presigned(query: &str) -> Option<String> {
    // Borrowed unless the name is percent-encoded; compared without a lower-cased copy.
    fn name(pair: &str) -> std::borrow::Cow<'_, str> {
        let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
        percent_decode_str(raw).decode_utf8_lossy()
    }
    let v2 = query
        .split('&')
        .any(|p| name(p).eq_ignore_ascii_case("awsaccesskeyid"));
    let ours = |pair: &str| {
        let n = name(pair);
        PRESIGNED.iter().any(|p| n.eq_ignore_ascii_case(p))
            || (v2 && PRESIGNED_V2.iter().any(|p| n.eq_ignore_ascii_case(p)))
    };
    if !query.split('&').any(ours) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !ours(p)).collect();
    Some(kept.join("&"))
}

/// The canonical URI of `path` (as sent, percent-encoded).
pub fn uri(path: &str, s3: bool) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    if s3 {
        let decoded: Vec<u8> = percent_decode_str(path).collect();
        return percent_encode(&decoded, PATH).to_string();
    }
    // Other services: normalised (empty and `.` segments dropped, as the SDKs do), then the
    // path as sent encoded once more: its escapes become `%25XX` (the "double encoding").
    let mut out = String::with_capacity(path.len() + 8);
    for segment in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
        out.push('/');
        out.extend(percent_encode(segment.as_bytes(), UNRESERVED));
    }
    if out.is_empty() || (path.ends_with('/') && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

/// The canonical query: every pair decoded and re-encoded, sorted by name then value.
pub fn query(query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let enc = |s: &str| {
        let decoded: Vec<u8> = percent_decode_str(s).collect();
        percent_encode(&decoded, UNRESERVED).to_string()
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (enc(k), enc(v)),
            None => (enc(p), String::new()),
        })
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(query.len() + 8);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Whether sidekey signs this header: `host`, `content-type`, `content-md5` and every
/// `x-amz-*` (S3 requires every `x-amz-*` header present to be signed).
pub fn signs(name: &HeaderName) -> bool {
    matches!(name.as_str(), "host" | "content-type" | "content-md5")
        || name.as_str().starts_with("x-amz-")
}

/// Canonical headers (`name:value\n` each, sorted) and the signed-headers list, for the
/// headers of `map` that `pick` selects. Values are trimmed, runs of spaces collapsed, several
/// values of one name joined with `,`.
pub fn headers(map: &HeaderMap, pick: impl Fn(&HeaderName) -> bool) -> (Vec<u8>, String) {
    let mut names: Vec<&HeaderName> = map.keys().filter(|n| pick(n)).collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut canonical = Vec::with_capacity(256);
    let mut signed = String::with_capacity(64);
    for name in names {
        if !signed.is_empty() {
            signed.push(';');
        }
        signed.push_str(name.as_str());
        canonical.extend_from_slice(name.as_str().as_bytes());
        canonical.push(b':');
        for (i, value) in map.get_all(name).iter().enumerate() {
            if i > 0 {
                canonical.push(b',');
            }
            let mut space = false;
            for &b in value.as_bytes().trim_ascii() {
                if b == b' ' || b == b'\t' {
                    space = true;
                    continue;
                }
                if space {
                    canonical.push(b' ');
                    space = false;
                }
                canonical.push(b);
            }
        }
        canonical.push(b'\n');
    }
    (canonical, signed)
}

/// Hex SHA-256 of the canonical request.
pub fn request_hash(
    method: &str,
    uri: &str,
    query: &str,
    headers: &[u8],
    signed: &str,
    payload: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [method, "\n", uri, "\n", query, "\n"] {
        h.update(part.as_bytes());
    }
    h.update(headers);
    for part in ["\n", signed, "\n", payload] {
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}
