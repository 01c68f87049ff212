//! A Google service account (RFC 7523 JWT-bearer grant): an RS256 assertion with iss = the
//! account's `client_email`, `scope`, aud = the key file's `token_uri`, iat 30 s in the past
//! (clock skew) and exp = iat + 1 hour, posted to that `token_uri`.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Uri};
use zeroize::Zeroizing;

use super::MintError;
use super::jwt;

pub(super) fn request(
    scope: &str,
    parts: &[Zeroizing<Vec<u8>>],
    now: SystemTime,
) -> Result<Request<Bytes>, MintError> {
    let raw = parts
        .first()
        .ok_or_else(|| MintError::Secret("key file missing".into()))?;
    let key: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|_| MintError::Secret("the key file is not JSON".into()))?;
    let field = |k: &str| {
        key.get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| MintError::Secret(format!("the key file has no `{k}`")))
    };
    let email = field("client_email")?;
    let token_uri = field("token_uri")?;
    let pem = Zeroizing::new(field("private_key")?.as_bytes().to_vec());
    let uri: Uri = token_uri
        .parse()
        .map_err(|_| MintError::Secret("the key file's token_uri is not a URL".into()))?;
    let iat = jwt::unix(now) - 30;
    let claims = serde_json::json!({
        "iss": email,
        "scope": scope,
        "aud": token_uri,
        "iat": iat,
        "exp": iat + 3600,
    });
    let assertion = jwt::sign(&jwt::key(&pem)?, &claims)?;
    let body = Zeroizing::new(
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish(),
    );
    Request::post(uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Bytes::from(body.as_bytes().to_vec()))
        .map_err(|e| MintError::Secret(format!("token request: {e}")))
}
