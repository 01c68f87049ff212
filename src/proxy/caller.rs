//! Who is calling. Service shape: whoever reaches the loopback listener is the service.
//! Gateway shape: a verified client certificate naming a caller's SAN, or a caller token
//! in `Authorization: Bearer` (where SDKs already put an API key), checked against the
//! stored SHA-256 values in constant time. The token is stripped with every other caller
//! credential before forwarding.

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{Config, Identity};

/// What the connection proved: the names in a verified client certificate, if any.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub cert_names: Option<Arc<[String]>>,
    /// The caller the forward proxy identified by `Proxy-Authorization` when the tunnel was
    /// opened (by name: a reload may reorder callers). Requests inside the tunnel are that
    /// caller's.
    pub proxy_caller: Option<Arc<str>>,
}

/// Why a gateway caller was not identified (the `reason` in the 401 body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unidentified {
    /// No client certificate a caller is bound to and no caller token.
    Missing,
    /// A token was presented that no caller has.
    UnknownToken,
    /// The certificate and the token name different callers.
    Conflict,
}

impl Unidentified {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "no_caller_identity",
            Self::UnknownToken => "unknown_token",
            Self::Conflict => "conflicting_identities",
        }
    }
}

/// The index of the calling principal in `config.principals`.
pub fn identify(config: &Config, peer: &Peer, headers: &HeaderMap) -> Result<usize, Unidentified> {
    if !config.gateway {
        return Ok(0);
    }
    if let Some(name) = &peer.proxy_caller {
        return config
            .principals
            .iter()
            .position(|p| p.name == *name)
            .ok_or(Unidentified::Missing);
    }
    let by_cert = peer.cert_names.as_deref().and_then(|names| {
        config.principals.iter().position(
            |p| matches!(&p.identity, Identity::ClientCert(san) if names.iter().any(|n| n == san)),
        )
    });
    let by_token = bearer_token(headers).map(|token| by_token(config, token));
    match (by_cert, by_token) {
        (Some(c), None) => Ok(c),
        (Some(c), Some(Ok(t))) if c == t => Ok(c),
        (Some(_), Some(Ok(_))) => Err(Unidentified::Conflict),
        // A certificate identity stands; a stray unknown token is stripped like any header.
        (Some(c), Some(Err(_))) => Ok(c),
        (None, Some(t)) => t,
        (None, None) => Err(Unidentified::Missing),
    }
}

/// The caller whose token this is (every stored hash compared, all bytes each: no early exit
/// to time).
pub fn by_token(config: &Config, token: &[u8]) -> Result<usize, Unidentified> {
    let hash: [u8; 32] = Sha256::digest(token).into();
    let mut found = None;
    for (i, p) in config.principals.iter().enumerate() {
        if let Identity::Token(stored) = &p.identity {
            if constant_time_eq(stored, &hash) {
                found = Some(i);
            }
        }
    }
    found.ok_or(Unidentified::UnknownToken)
}

/// The caller token in `Proxy-Authorization`: `Bearer <token>`, or `Basic` with the token as
/// the password (for clients that only take credentials in the proxy URL).
pub fn proxy_token(headers: &HeaderMap) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    let value = headers.get(http::header::PROXY_AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    let rest = rest.trim_ascii();
    let token = if scheme.eq_ignore_ascii_case(b"bearer") {
        rest.to_vec()
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?,
        );
        let colon = decoded.iter().position(|b| *b == b':')?;
        decoded.get(colon + 1..)?.to_vec()
    } else {
        return None;
    };
    (!token.is_empty()).then(|| zeroize::Zeroizing::new(token))
}

/// The token in `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value.get(7..)?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0
}

/// A fresh caller token: `skc_` and 64 hex characters (32 random bytes).
pub fn new_token() -> Result<String, String> {
    let provider = rustls::crypto::ring::default_provider();
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    provider
        .secure_random
        .fill(&mut *bytes)
        .map_err(|_| "no secure random source".to_owned())?;
    let mut token = String::with_capacity(68);
    token.push_str("skc_");
    for b in bytes.iter() {
        token.push_str(&format!("{b:02x}"));
    }
    Ok(token)
}

/// The `token_sha256` value for a token.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn gateway() -> Config {
        let dir = std::env::temp_dir().join(format!("sidekey-caller-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[listener.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca_file = \"ca\"\n\
             [upstream]\nurl = \"https://api.example.com\"\n[credential]\nfile = \"key\"\n\
             [permissions]\nread = [\"GET /v1/x\"]\n\
             [[caller]]\nname = \"cert\"\nclient_cert_san = \"spiffe://corp/a\"\nallow = [\"read\"]\n\
             [[caller]]\nname = \"tok\"\ntoken_sha256 = \"{}\"\nallow = [\"read\"]\n",
            token_sha256("good")
        );
        let path = dir.join("gw.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        config
    }

    #[test]
    fn proxy_authorization_bearer_or_basic_password() {
        use base64::Engine as _;
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("proxy-authorization", HeaderValue::from_str(v).unwrap());
            m
        };
        let tok = |m: &HeaderMap| proxy_token(m).map(|t| String::from_utf8(t.to_vec()).unwrap());
        assert_eq!(tok(&h("Bearer skc_1")).as_deref(), Some("skc_1"));
        let basic = base64::engine::general_purpose::STANDARD.encode("me:skc_2");
        assert_eq!(tok(&h(&format!("basic {basic}"))).as_deref(), Some("skc_2"));
        let no_pass = base64::engine::general_purpose::STANDARD.encode("me:");
        assert_eq!(tok(&h(&format!("Basic {no_pass}"))), None);
        assert_eq!(tok(&h("Digest x")), None);
        assert_eq!(tok(&HeaderMap::new()), None);
    }

    #[test]
    fn certificates_and_tokens_identify_one_caller_or_none() {
        let config = gateway();
        let cert = Peer {
            cert_names: Some(Arc::from(vec!["spiffe://corp/a".to_owned()])),
            proxy_caller: None,
        };
        let stranger = Peer {
            cert_names: Some(Arc::from(vec!["spiffe://corp/zz".to_owned()])),
            proxy_caller: None,
        };
        let token = |t: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_static(t));
            h
        };
        let none = HeaderMap::new();
        assert_eq!(identify(&config, &cert, &none), Ok(0));
        assert_eq!(
            identify(&config, &Peer::default(), &token("Bearer good")),
            Ok(1)
        );
        assert_eq!(
            identify(&config, &Peer::default(), &token("Bearer bad")),
            Err(Unidentified::UnknownToken)
        );
        assert_eq!(
            identify(&config, &stranger, &none),
            Err(Unidentified::Missing)
        );
        assert_eq!(
            identify(&config, &Peer::default(), &none),
            Err(Unidentified::Missing)
        );
        // A certificate and a token naming different callers: refused.
        assert_eq!(
            identify(&config, &cert, &token("Bearer good")),
            Err(Unidentified::Conflict)
        );
        // A certificate caller whose SDK sends some other bearer value stays identified.
        assert_eq!(
            identify(&config, &cert, &token("Bearer sdk-default")),
            Ok(0)
        );
        // An unknown certificate name does not make a valid token count less.
        assert_eq!(identify(&config, &stranger, &token("Bearer good")), Ok(1));
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", HeaderValue::from_static("bEaReR  abc "));
        assert_eq!(bearer_token(&h), Some(&b"abc"[..]));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn tokens_are_fresh_and_hash_as_documented() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("skc_") && a.len() == 68);
        assert_eq!(
            token_sha256("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(constant_time_eq(&[7; 32], &[7; 32]));
        assert!(!constant_time_eq(&[7; 32], &[8; 32]));
    }
}
