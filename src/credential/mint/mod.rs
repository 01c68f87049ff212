//! Tokens sidekey mints itself (pure parts: no I/O). The service holds a client secret or a
//! private key; sidekey trades it for a short-lived access token at a token endpoint and sends
//! `Authorization: Bearer <token>`. One file per kind builds the token request from the secret
//! parts and reads the answer: `oauth2` (RFC 6749 client credentials, section 4.4),
//! `google` (RFC 7523 JWT-bearer with a service-account key), `github` (an App's installation
//! token). The network side and the refresh schedule are `control::token`.

mod github;
mod google;
pub(crate) mod jwt;
mod oauth2;
mod sts;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Uri};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

/// A response without `expires_in` counts as valid this long.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest token response read.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// How the client authenticates at an OAuth2 token endpoint (RFC 6749 section 2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with form-encoded id and secret.
    Basic,
    /// `client_secret_post`: id and secret in the form body.
    Post,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Parts: `client_id`, `client_secret`.
    OAuth2 {
        token_url: Uri,
        client_auth: ClientAuth,
        scope: Option<String>,
        params: Vec<(String, String)>,
    },
    /// Parts: `key_file` (the service account's JSON key; its `token_uri` is the endpoint).
    Google { scope: String },
    /// Parts: `private_key` (PEM). The endpoint is the API's own origin.
    GitHub {
        api_url: Uri,
        app_id: String,
        installation_id: String,
    },
    /// Parts: `web_identity_token` (a file). Temporary AWS keys for an `aws_sigv4` API.
    AwsWebIdentity {
        sts_url: Uri,
        role_arn: String,
        session_name: String,
    },
}

/// Where the token endpoint is reached: extra trust roots, an address to dial instead.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub roots: Vec<CertificateDer<'static>>,
    pub connect_to: Option<SocketAddr>,
}

/// A minted credential's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mint {
    pub kind: Kind,
    pub endpoint: Endpoint,
    /// Refresh once less than this is left; `None`: the smaller of 20% of the lifetime and
    /// 5 minutes.
    pub refresh_before: Option<Duration>,
}

impl Mint {
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::OAuth2 { .. } => "oauth2_client_credentials",
            Kind::Google { .. } => "google_service_account",
            Kind::GitHub { .. } => "github_app",
            Kind::AwsWebIdentity { .. } => "aws_sigv4",
        }
    }

    /// How long before expiry a token of `lifetime` is refreshed.
    pub fn margin(&self, lifetime: Duration) -> Duration {
        let margin = self
            .refresh_before
            .unwrap_or_else(|| (lifetime / 5).min(Duration::from_secs(300)));
        margin.min(lifetime)
    }

    /// The token request for these secret parts (in the scheme's order), made at `now`.
    pub fn request(
        &self,
        parts: &[Zeroizing<Vec<u8>>],
        now: SystemTime,
    ) -> Result<Request<Bytes>, MintError> {
        match &self.kind {
            Kind::OAuth2 {
                token_url,
                client_auth,
                scope,
                params,
            } => oauth2::request(token_url, *client_auth, scope.as_deref(), params, parts),
            Kind::Google { scope } => google::request(scope, parts, now),
            Kind::GitHub {
                api_url,
                app_id,
                installation_id,
            } => github::request(api_url, app_id, installation_id, parts, now),
            Kind::AwsWebIdentity {
                sts_url,
                role_arn,
                session_name,
            } => sts::request(sts_url, role_arn, session_name, parts),
        }
    }

    /// Reads the token endpoint's answer (`status`, body). The body is a secret: errors carry
    /// only the RFC 6749 section 5.2 `error` and `error_description`, never the body.
    pub fn parse(
        &self,
        status: http::StatusCode,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Token, MintError> {
        match &self.kind {
            Kind::OAuth2 { .. } | Kind::Google { .. } => oauth2::parse(status, body),
            Kind::GitHub { .. } => github::parse(status, body, now),
            Kind::AwsWebIdentity { .. } => sts::parse(status, body, now),
        }
    }
}

/// A minted access token and how long it is valid from when it was requested.
pub struct Token {
    /// The bearer token (AWS: the session token).
    pub value: Zeroizing<String>,
    pub lifetime: Duration,
    /// AWS temporary keys that come with the session token.
    pub aws: Option<AwsKeys>,
}

/// The key pair of AWS temporary credentials.
pub struct AwsKeys {
    pub key_id: String,
    pub secret: Zeroizing<String>,
}

/// Why no token was minted. Never carries a secret, an assertion or a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("the secret is unusable: {0}")]
    Secret(String),
    #[error("the token endpoint answered {status}: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("the token endpoint's answer is not a token response: {0}")]
    Malformed(String),
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
}

impl MintError {
    /// The `result` label of `sidekey_token_fetches_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::Secret(_) => "invalid_secret",
            Self::Refused { .. } => "refused",
            Self::Malformed(_) => "malformed",
            Self::Unreachable(_) => "unreachable",
        }
    }
}

/// `expires_in` as a number or a numeric string (Azure AD v1 sends `"3599"`).
fn seconds(v: Option<&serde_json::Value>) -> Option<Duration> {
    let n = match v? {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (n.is_finite() && n > 0.0).then(|| Duration::from_secs_f64(n.min(1e9)))
}

/// RFC 6749 section 5.2 error fields, bounded, from a JSON error body.
fn refused(status: http::StatusCode, body: &[u8]) -> MintError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| {
        v.get(k).and_then(|e| e.as_str()).map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        })
    };
    MintError::Refused {
        status: status.as_u16(),
        error: text("error")
            .or_else(|| text("message"))
            .unwrap_or_else(|| "no error code".into()),
        description: text("error_description"),
    }
}

#[cfg(test)]
mod tests;
