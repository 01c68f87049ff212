//! AWS Signature Version 4: sidekey signs what it forwards with the real keys; the app's SDK
//! signs with placeholders and that signature is stripped (`proxy::inject` removes
//! `Authorization`, `X-Amz-Date` and `X-Amz-Security-Token`; [`Signer::sign`] removes a
//! presigned URL's query parameters).
//!
//! The body's hash comes from `x-amz-content-sha256`, set before signing by
//! [`Signer::payload`]'s plan: the caller's own (a hex hash, `UNSIGNED-PAYLOAD` or
//! `STREAMING-UNSIGNED-PAYLOAD-TRAILER`), `UNSIGNED-PAYLOAD` for S3 by default, or the hash of
//! a body the proxy read up to `max_signed_body`. Chunk-signed uploads cannot be re-signed by
//! a proxy and are refused.
//!
//! The signing key (four HMACs) is derived once per UTC day and kept, lock-free.

pub mod canonical;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName, HeaderValue};
use ring::hmac;
use zeroize::Zeroizing;

use super::ApplyError;

pub const CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
pub const DATE: HeaderName = HeaderName::from_static("x-amz-date");
pub const SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
/// SHA-256 of nothing.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
pub const UNSIGNED: &str = "UNSIGNED-PAYLOAD";
const UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// Default bound on a body read to be hashed.
pub const DEFAULT_MAX_SIGNED_BODY: u64 = 10 * 1024 * 1024;

/// How request bodies are covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// `UNSIGNED-PAYLOAD` (S3 only): bodies stream.
    Unsigned,
    /// The body's SHA-256, read up to `max_signed_body` unless the caller declared it.
    Signed,
}

/// An `aws_sigv4` credential's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub region: String,
    pub service: String,
    pub payload: Payload,
    pub max_signed_body: u64,
    /// Temporary credentials from STS `AssumeRoleWithWebIdentity`, minted and refreshed by
    /// `control::token` (`None`: static keys from the parts).
    pub role: Option<Arc<super::mint::Mint>>,
}

impl Settings {
    pub fn is_s3(&self) -> bool {
        self.service == "s3"
    }
}

/// What to do with the body before signing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `x-amz-content-sha256` is set: sign as it is.
    Ready,
    /// Read the body (up to this many bytes), set its hash, then sign.
    Hash(u64),
}

/// The caller sent a chunk-signed upload (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`): each chunk
/// carries a signature made with the caller's key, which no proxy can redo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedChunks;

struct DayKey {
    date: [u8; 8],
    key: hmac::Key,
}

/// The loaded keys of one `aws_sigv4` credential.
pub struct Signer {
    settings: Arc<Settings>,
    key_id: String,
    /// `AWS4` + the secret access key.
    secret: Zeroizing<Vec<u8>>,
    token: Option<HeaderValue>,
    day: ArcSwapOption<DayKey>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .field("region", &self.settings.region)
            .field("service", &self.settings.service)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// `key_id`, `secret` and `token` are validated visible ASCII.
    pub fn new(
        settings: Arc<Settings>,
        key_id: &[u8],
        secret: &[u8],
        token: Option<&[u8]>,
    ) -> Result<Self, super::KeyError> {
        let mut prefixed = Zeroizing::new(Vec::with_capacity(secret.len() + 4));
        prefixed.extend_from_slice(b"AWS4");
        prefixed.extend_from_slice(secret);
        let token = match token {
            Some(t) => {
                let mut v = HeaderValue::from_bytes(t).map_err(|_| super::KeyError::InvalidChar)?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            settings,
            key_id: String::from_utf8_lossy(key_id).into_owned(),
            secret: prefixed,
            token,
            day: ArcSwapOption::empty(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The body plan for a request with these headers: the caller's declared hash is kept
    /// when it is one AWS checks against the body, never against the key.
    pub fn payload(&self, headers: &mut HeaderMap, has_body: bool) -> Result<Plan, SignedChunks> {
        if let Some(v) = headers.get(&CONTENT_SHA256) {
            let v = v.as_bytes();
            if v.starts_with(b"STREAMING-AWS4-") {
                return Err(SignedChunks);
            }
            let hex = v.len() == 64 && v.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            let unsigned = v == UNSIGNED.as_bytes() || v == UNSIGNED_TRAILER.as_bytes();
            if hex || (unsigned && self.settings.is_s3()) {
                return Ok(Plan::Ready);
            }
            headers.remove(&CONTENT_SHA256);
        }
        let value = match (has_body, self.settings.payload) {
            (false, _) => EMPTY_SHA256,
            (true, Payload::Unsigned) => UNSIGNED,
            (true, Payload::Signed) => return Ok(Plan::Hash(self.settings.max_signed_body)),
        };
        headers.insert(CONTENT_SHA256, HeaderValue::from_static(value));
        Ok(Plan::Ready)
    }

    /// Signs the request as it will be sent: its `Host` (or the URI's authority), method,
    /// path and query, and the headers [`canonical::signs`] picks.
    pub fn sign(
        &self,
        parts: &mut http::request::Parts,
        now: SystemTime,
    ) -> Result<(), ApplyError> {
        if let Some(kept) = parts.uri.query().and_then(canonical::without_presigned) {
            let path = parts.uri.path();
            let target = match kept.is_empty() {
                true => path.to_owned(),
                false => format!("{path}?{kept}"),
            };
            parts.uri = http::Uri::try_from(target).map_err(|_| ApplyError)?;
        }
        if !parts.headers.contains_key(http::header::HOST) {
            let authority = parts.uri.authority().ok_or(ApplyError)?;
            let host = HeaderValue::from_str(authority.as_str()).map_err(|_| ApplyError)?;
            parts.headers.insert(http::header::HOST, host);
        }
        let stamp = Stamp::of(now);
        parts.headers.insert(
            DATE,
            HeaderValue::from_str(&stamp.full).map_err(|_| ApplyError)?,
        );
        match &self.token {
            Some(t) => parts.headers.insert(SECURITY_TOKEN, t.clone()),
            None => parts.headers.remove(SECURITY_TOKEN),
        };
        if !parts.headers.contains_key(&CONTENT_SHA256) {
            parts
                .headers
                .insert(CONTENT_SHA256, HeaderValue::from_static(EMPTY_SHA256));
        }
        let payload = parts
            .headers
            .get(&CONTENT_SHA256)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(EMPTY_SHA256)
            .to_owned();
        let (headers, signed) = canonical::headers(&parts.headers, canonical::signs);
        let hash = canonical::request_hash(
            parts.method.as_str(),
            &canonical::uri(parts.uri.path(), self.settings.is_s3()),
            &canonical::query(parts.uri.query()),
            &headers,
            &signed,
            &payload,
        );
        let signature = self.signature(&stamp, &hash);
        let mut value = HeaderValue::from_str(&format!(
            "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={signed}, Signature={signature}",
            self.key_id,
            self.scope(&stamp),
        ))
        .map_err(|_| ApplyError)?;
        value.set_sensitive(true);
        parts.headers.insert(http::header::AUTHORIZATION, value);
        Ok(())
    }

    fn scope(&self, stamp: &Stamp) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            stamp.date(),
            self.settings.region,
            self.settings.service
        )
    }

    /// The hex signature over the canonical request's hash.
    fn signature(&self, stamp: &Stamp, request_hash: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{}\n{}\n{request_hash}",
            stamp.full,
            self.scope(stamp)
        );
        let key = self.day_key(stamp);
        canonical::hex(hmac::sign(&key, to_sign.as_bytes()).as_ref())
    }

    /// The signing key of `stamp`'s day, derived once per day.
    fn day_key(&self, stamp: &Stamp) -> hmac::Key {
        let date = stamp.date_bytes();
        if let Some(day) = self.day.load().as_ref().filter(|d| d.date == date) {
            return day.key.clone();
        }
        let step =
            |key: &[u8], data: &[u8]| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
        let k_date = step(&self.secret, &date);
        let k_region = step(k_date.as_ref(), self.settings.region.as_bytes());
        let k_service = step(k_region.as_ref(), self.settings.service.as_bytes());
        let k_signing = step(k_service.as_ref(), b"aws4_request");
        let key = hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref());
        self.day.store(Some(Arc::new(DayKey {
            date,
            key: key.clone(),
        })));
        key
    }
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
struct Stamp {
    full: String,
}

impl Stamp {
    fn of(now: SystemTime) -> Self {
        let t = time::OffsetDateTime::from(now);
        Self {
            full: format!(
                "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
        }
    }

    fn date(&self) -> &str {
        self.full.get(..8).unwrap_or_default()
    }

    fn date_bytes(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.date().as_bytes().get(..8).unwrap_or(b"19700101"));
        out
    }
}

#[cfg(test)]
mod tests;
