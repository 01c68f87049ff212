//! Credentials minted off the request path (a token endpoint's access token, STS's temporary
//! AWS keys): built from what the token task fetched, identified by their secret inputs.

use std::sync::Arc;
use std::time::SystemTime;

use zeroize::Zeroizing;

use super::{
    Credential, Form, Identity, KeyError, Scheme, Spec, TokenInfo, fingerprint, header, mint,
    scrub, sigv4, validate_key,
};

impl Credential {
    /// A minted token, sent as `Authorization: Bearer <token>`. `parts` are the secret inputs
    /// it was minted from: their fingerprints are the credential's (the same on every replica,
    /// whatever token each holds); the token has its own in [`token`](Self::token).
    pub fn minted(
        spec: &Spec,
        parts: &[Zeroizing<Vec<u8>>],
        token: &str,
        fetched_at: SystemTime,
        lifetime: std::time::Duration,
    ) -> Result<Self, KeyError> {
        let value = header::value("Bearer ", validate_key(token.as_bytes())?)?;
        let form = Form::Headers(vec![(http::header::AUTHORIZATION, value)]);
        let fp = fingerprint(token.as_bytes());
        Self::minted_form(
            spec,
            parts,
            form,
            &[token.as_bytes()],
            fp,
            fetched_at,
            lifetime,
        )
    }

    /// Temporary AWS keys (STS): signed with, never sent. The token's fingerprint shown is the
    /// secret access key's.
    pub fn minted_aws(
        spec: &Spec,
        parts: &[Zeroizing<Vec<u8>>],
        keys: &mint::AwsKeys,
        session: &str,
        fetched_at: SystemTime,
        lifetime: std::time::Duration,
    ) -> Result<Self, KeyError> {
        let Scheme::AwsSigV4(settings) = &spec.scheme else {
            return Err(KeyError::Minted);
        };
        let secret = validate_key(keys.secret.as_bytes())?;
        let signer = sigv4::Signer::new(
            settings.clone(),
            validate_key(keys.key_id.as_bytes())?,
            secret,
            Some(validate_key(session.as_bytes())?),
        )?;
        let form = Form::SigV4(Box::new(signer));
        let fp = fingerprint(secret);
        let secrets = [secret, session.as_bytes()];
        Self::minted_form(spec, parts, form, &secrets, fp, fetched_at, lifetime)
    }

    fn minted_form(
        spec: &Spec,
        parts: &[Zeroizing<Vec<u8>>],
        form: Form,
        minted: &[&[u8]],
        token_fingerprint: String,
        fetched_at: SystemTime,
        lifetime: std::time::Duration,
    ) -> Result<Self, KeyError> {
        let inputs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let id = Identity::of(spec, &inputs, minted.first().copied());
        // The token, and the secret inputs that are keys (not documents such as a PEM key).
        let needles = Arc::new(scrub::Needles::of(
            spec.parts
                .iter()
                .zip(&inputs)
                .filter(|(p, _)| p.source.is_secret() && !p.is_document())
                .map(|(_, v)| *v)
                .chain(minted.iter().copied()),
        ));
        let stripped = match &form {
            Form::SigV4(_) => vec![sigv4::DATE, sigv4::SECURITY_TOKEN],
            _ => Vec::new(),
        };
        Ok(Self {
            scheme: spec.scheme.name(),
            form,
            stripped,
            parts: id.parts,
            fingerprint: id.fingerprint,
            digest: id.digest,
            source: id.source,
            loaded_at: fetched_at,
            token: Some(TokenInfo {
                fingerprint: token_fingerprint,
                fetched_at,
                expires_at: fetched_at + lifetime,
            }),
            own: needles.clone(),
            needles,
        })
    }
}
