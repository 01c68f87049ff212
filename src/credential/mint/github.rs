//! A GitHub App installation token: an RS256 app JWT (iss = app id, iat 60 s in the past for
//! clock drift, exp 9 minutes ahead: GitHub refuses more than 10) posted to
//! `{api}/app/installations/{id}/access_tokens`, answered 201 with `token` and `expires_at`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use zeroize::Zeroizing;

use super::{DEFAULT_LIFETIME, MintError, Token, jwt, refused};

pub(super) fn request(
    api: &Uri,
    app_id: &str,
    installation: &str,
    parts: &[Zeroizing<Vec<u8>>],
    now: SystemTime,
) -> Result<Request<Bytes>, MintError> {
    let pem = parts
        .first()
        .ok_or_else(|| MintError::Secret("private key missing".into()))?;
    let iat = jwt::unix(now) - 60;
    let claims = serde_json::json!({ "iat": iat, "exp": iat + 60 + 540, "iss": app_id });
    let token = jwt::sign(&jwt::key(pem)?, &claims)?;
    let base = api.to_string();
    let url = format!(
        "{}/app/installations/{installation}/access_tokens",
        base.trim_end_matches('/')
    );
    let mut auth = http::HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
        .map_err(|_| MintError::Secret("app JWT".into()))?;
    auth.set_sensitive(true);
    Request::post(url)
        .header(http::header::AUTHORIZATION, auth)
        .header(http::header::ACCEPT, "application/vnd.github+json")
        .header(http::header::USER_AGENT, "sidekey")
        .header("x-github-api-version", "2022-11-28")
        .body(Bytes::new())
        .map_err(|e| MintError::Secret(format!("token request: {e}")))
}

pub(super) fn parse(status: StatusCode, body: &[u8], now: SystemTime) -> Result<Token, MintError> {
    if !status.is_success() {
        return Err(refused(status, body));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| MintError::Malformed("not JSON".into()))?;
    let token = v
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| crate::credential::validate_key(t.as_bytes()).is_ok())
        .ok_or_else(|| MintError::Malformed("no usable `token`".into()))?;
    let lifetime = v
        .get("expires_at")
        .and_then(|e| e.as_str())
        .and_then(|e| humantime::parse_rfc3339(e).ok())
        .and_then(|at| at.duration_since(now).ok())
        .filter(|d| *d > Duration::ZERO)
        .unwrap_or(DEFAULT_LIFETIME);
    Ok(Token {
        value: Zeroizing::new(token.to_owned()),
        lifetime,
        aws: None,
    })
}
