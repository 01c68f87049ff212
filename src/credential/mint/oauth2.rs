//! OAuth2 client credentials (RFC 6749 section 4.4): `grant_type=client_credentials`, the
//! client authenticated with Basic (id and secret form-encoded first, section 2.3.1: not
//! plain RFC 7617 Basic) or in the body; `scope` and extra parameters (`audience`,
//! `resource`) as configured. Also reads any RFC 6749 token response (Google's too).

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use zeroize::Zeroizing;

use super::{ClientAuth, DEFAULT_LIFETIME, MintError, Token, refused, seconds};

fn text(raw: &[u8], what: &str) -> Result<String, MintError> {
    std::str::from_utf8(raw)
        .map(|s| s.trim().to_owned())
        .map_err(|_| MintError::Secret(format!("the {what} is not UTF-8")))
}

pub(super) fn request(
    token_url: &Uri,
    auth: ClientAuth,
    scope: Option<&str>,
    params: &[(String, String)],
    parts: &[Zeroizing<Vec<u8>>],
) -> Result<Request<Bytes>, MintError> {
    let (Some(id), Some(secret)) = (parts.first(), parts.get(1)) else {
        return Err(MintError::Secret("client id or secret missing".into()));
    };
    let id = Zeroizing::new(text(id, "client id")?);
    let secret = Zeroizing::new(text(secret, "client secret")?);
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if let Some(s) = scope {
        form.append_pair("scope", s);
    }
    for (k, v) in params {
        form.append_pair(k, v);
    }
    let mut b = Request::post(token_url.clone())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    match auth {
        ClientAuth::Post => {
            form.append_pair("client_id", &id);
            form.append_pair("client_secret", &secret);
        }
        ClientAuth::Basic => {
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = Zeroizing::new(format!("{}:{}", enc(&id), enc(&secret)));
            let b64 =
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
            let mut value = http::HeaderValue::from_str(&format!("Basic {}", b64.as_str()))
                .map_err(|_| MintError::Secret("client id or secret".into()))?;
            value.set_sensitive(true);
            b = b.header(http::header::AUTHORIZATION, value);
        }
    }
    let body = Zeroizing::new(form.finish());
    b.body(Bytes::from(body.as_bytes().to_vec()))
        .map_err(|e| MintError::Secret(format!("token request: {e}")))
}

/// An RFC 6749 section 5.1 response (`access_token`, `expires_in`), or a 5.2 error.
pub(super) fn parse(status: StatusCode, body: &[u8]) -> Result<Token, MintError> {
    if !status.is_success() {
        return Err(refused(status, body));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| MintError::Malformed("not JSON".into()))?;
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| MintError::Malformed("no access_token".into()))?;
    if crate::credential::validate_key(token.as_bytes()).is_err() {
        return Err(MintError::Malformed(
            "the access_token is not a header-safe token".into(),
        ));
    }
    Ok(Token {
        value: Zeroizing::new(token.to_owned()),
        lifetime: seconds(v.get("expires_in")).unwrap_or(DEFAULT_LIFETIME),
        aws: None,
    })
}
