//! What a signing credential (`aws_sigv4`) needs before `apply` signs: the `Host` the request
//! will carry, and the body's hash. A caller's declared hash (or S3's `UNSIGNED-PAYLOAD`) lets
//! the body stream; otherwise the body is read up to `max_signed_body` and hashed (the one
//! bounded exception to streaming), and a larger one gets 413 `body_too_large_to_sign` with
//! nothing sent. A chunk-signed upload gets 400 `aws_chunk_signatures_unsupported`.
//!
//! An answer that says the credentials expired forces one refresh ([`expired`]).

use bytes::Bytes;
use http::HeaderValue;
use http::request::Parts;
use http_body_util::{BodyExt as _, Either, Full, Limited};
use sha2::{Digest, Sha256};

use super::error::ProxyError;
use crate::body::{BodyFault, Fault};
use crate::credential::sigv4::{self, Plan, Signer};
use crate::upstream::RequestBody;

pub(super) async fn prepare(
    signer: &Signer,
    host: &HeaderValue,
    parts: &mut Parts,
    body: RequestBody,
    fault: Option<&BodyFault>,
) -> Result<RequestBody, ProxyError> {
    parts.headers.insert(http::header::HOST, host.clone());
    let has_body = !http_body::Body::is_end_stream(&body);
    let max = match signer.payload(&mut parts.headers, has_body) {
        Err(sigv4::SignedChunks) => return Err(ProxyError::SignedChunks),
        Ok(Plan::Ready) => return Ok(body),
        Ok(Plan::Hash(max)) => max,
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ProxyError::BodyTooLargeToSign);
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let bytes: Bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ProxyError::BodyTooLargeToSign);
        }
        Err(_) => {
            return Err(match fault.and_then(BodyFault::get) {
                Some(Fault::TooLarge) => ProxyError::PayloadTooLarge,
                Some(Fault::Stalled) => ProxyError::InvalidRequest("body_timeout"),
                Some(Fault::Malformed) | None => ProxyError::InvalidRequest("malformed_body"),
            });
        }
    };
    let hash = sigv4::canonical::hex(&Sha256::digest(&bytes));
    let value =
        HeaderValue::from_str(&hash).map_err(|_| ProxyError::InvalidRequest("malformed_body"))?;
    parts.headers.insert(sigv4::CONTENT_SHA256, value);
    Ok(Either::Right(Full::new(bytes)))
}

/// AWS error types that mean the temporary credentials (or the key) are no longer valid.
const EXPIRED: [&str; 3] = [
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidClientTokenId",
];

/// A 400 or 403 whose `x-amzn-ErrorType` (JSON and query protocols) names an expired or
/// unknown token. S3 says so only in its XML body, which is streamed, never read: there the
/// refresh before expiry (and the key files' watch) is what keeps keys current.
pub(super) fn expired<B>(resp: &http::Response<B>) -> bool {
    if !matches!(resp.status().as_u16(), 400 | 403) {
        return false;
    }
    resp.headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or_default())
        .is_some_and(|t| EXPIRED.contains(&t))
}

#[cfg(test)]
mod tests {
    #[test]
    fn expired_token_answers() {
        let resp = |status: u16, t: &str| {
            http::Response::builder()
                .status(status)
                .header("x-amzn-errortype", t)
                .body(())
                .unwrap()
        };
        assert!(super::expired(&resp(
            400,
            "ExpiredTokenException:http://internal.amazon.com/coral/com.amazon.coral.service/"
        )));
        assert!(super::expired(&resp(403, "InvalidClientTokenId")));
        assert!(!super::expired(&resp(500, "ExpiredTokenException")));
        assert!(!super::expired(&resp(400, "ValidationException")));
    }
}
