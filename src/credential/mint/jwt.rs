//! RS256 JSON Web Tokens (RFC 7519 / 7515 compact form), signed with ring: the assertions of
//! Google's JWT-bearer grant and the GitHub App JWT. The private key is PEM, PKCS#8 or PKCS#1.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use zeroize::Zeroizing;

use super::MintError;

/// Parses a PEM RSA private key.
pub fn key(pem: &[u8]) -> Result<RsaKeyPair, MintError> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| MintError::Secret("not a PEM private key".into()))?;
    let pair = match &der {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err(MintError::Secret("not an RSA private key".into())),
    };
    pair.map_err(|e| MintError::Secret(format!("the RSA key is refused ({e})")))
}

/// `header.claims.signature`, RS256.
pub fn sign(key: &RsaKeyPair, claims: &serde_json::Value) -> Result<Zeroizing<String>, MintError> {
    let mut out = Zeroizing::new(String::new());
    URL_SAFE_NO_PAD.encode_string(br#"{"alg":"RS256","typ":"JWT"}"#, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut out);
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        out.as_bytes(),
        &mut sig,
    )
    .map_err(|_| MintError::Secret("signing failed".into()))?;
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&sig, &mut out);
    Ok(out)
}

/// Seconds since the Unix epoch.
pub fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
