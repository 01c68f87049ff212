//! What a signing credential (`aws_sigv4`) needs before `apply` signs: the `Host` the request
//! will carry, and the body's hash. A caller's declared hash (or S3's `UNSIGNED-PAYLOAD`) lets
//! the body stream; otherwise the body is read up to `max_signed_body` and hashed (the one
//! bounded exception to streaming), and a larger one gets 413 `body_too_large_to_sign` with
//! nothing sent. A chunk-signed upload gets 400 `aws_chunk_signatures_unsupported`.

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
