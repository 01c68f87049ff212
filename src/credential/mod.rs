//! Credentials: what one is (its [`Scheme`] and its secret parts), where the parts come from
//! ([`Source`]), its fingerprint, and [`Credential::apply`], the only code that puts a
//! credential into a request.
//!
//! A [`Spec`] is the validated config; [`Credential::load`] reads every part, validates it and
//! renders the ready-to-send form once (header values marked sensitive, query pair and path
//! prefixes encoded), so the request path only copies. `Debug` shows the scheme and
//! fingerprints, never a value; scratch buffers that held a part are wiped on drop.
//!
//! Adding a scheme: a file here with its encoder, a [`Scheme`] variant, its config shape in
//! `config/credential.rs`. Adding a source: a [`Source`] variant in `source.rs`.

mod basic;
mod header;
pub mod mint;
mod minted;
mod path;
mod query;
mod scrub;
pub mod sigv4;
mod source;
mod spec;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use scrub::Needles;
pub use source::{Source, looks_like_subpath_mount};
pub use spec::{MAX_DOCUMENT_LEN, Part, Scheme, Spec};

/// Longest part accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

/// Why no credential could be loaded. Never carries key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file: {0}")]
    Read(String),
    #[error("the environment variable {0} is not set or not UTF-8")]
    EnvMissing(String),
    #[error("the key file changed while it was read (half-written?)")]
    Unstable,
    #[error("the key is empty")]
    Empty,
    #[error("the key is longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    #[error("the key has a character outside visible ASCII (space, control or non-ASCII)")]
    InvalidChar,
    #[error("the Basic user name holds `:`")]
    ColonInUser,
    #[error("a token scheme is minted, not loaded")]
    Minted,
    #[error("part {part}: {error}")]
    Part { part: String, error: Box<KeyError> },
}

impl KeyError {
    /// `error` for I/O problems, `invalid` for content problems (metric label).
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::Read(_) | Self::EnvMissing(_) | Self::Unstable => "error",
            Self::Empty | Self::TooLong | Self::InvalidChar | Self::ColonInUser | Self::Minted => {
                "invalid"
            }
            Self::Part { error, .. } => error.result_label(),
        }
    }
}

/// The request target cannot carry the credential (a URI that does not rebuild).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyError;

/// The first 12 hex characters of SHA-256(key).
pub fn fingerprint(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    let mut out = String::with_capacity(12);
    for byte in digest.iter().take(6) {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Trims surrounding ASCII whitespace and checks the key's characters.
pub fn validate_key(raw: &[u8]) -> Result<&[u8], KeyError> {
    let key = raw.trim_ascii();
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !key.iter().all(|b| (0x21..=0x7E).contains(b)) {
        return Err(KeyError::InvalidChar);
    }
    Ok(key)
}

/// One loaded part, as shown in `/credential`: name, source kind, fingerprint (secret parts).
#[derive(Clone, Debug)]
pub struct PartInfo {
    pub name: Arc<str>,
    pub source: &'static str,
    pub fingerprint: Option<String>,
}

/// A minted token's own facts (shown in `/credential`; the token itself never is).
#[derive(Clone, Debug)]
pub struct TokenInfo {
    pub fingerprint: String,
    pub fetched_at: SystemTime,
    pub expires_at: SystemTime,
}

/// What identifies a loaded credential: each part's fingerprint, the credential's, a digest
/// over everything (a reload that changes nothing keeps the old one), the first secret
/// part's source kind.
struct Identity {
    parts: Vec<PartInfo>,
    fingerprint: String,
    digest: [u8; 32],
    source: &'static str,
}

impl Identity {
    /// `values` in the spec's part order; `token`: a minted token (in the digest only).
    fn of(spec: &Spec, values: &[&[u8]], token: Option<&[u8]>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(spec.scheme.name());
        let mut parts = Vec::with_capacity(spec.parts.len());
        for (part, v) in spec.parts.iter().zip(values) {
            hasher.update((v.len() as u64).to_be_bytes());
            hasher.update(v);
            parts.push(PartInfo {
                name: part.name.clone(),
                source: part.source.as_str(),
                fingerprint: (part.source.is_secret() && !is_public(part)).then(|| fingerprint(v)),
            });
        }
        if let Some(t) = token {
            hasher.update(t);
        }
        // AWS: the secret access key's alone (a session token changes with every refresh).
        let aws = matches!(spec.scheme, Scheme::AwsSigV4(_));
        let secret: Vec<&str> = parts
            .iter()
            .filter(|p| !aws || &*p.name == "secret_access_key")
            .filter_map(|p| p.fingerprint.as_deref())
            .collect();
        // One secret part: its own fingerprint (what `sidekey fingerprint FILE` prints).
        // Several: a fingerprint over theirs, so any part's rotation shows.
        let fingerprint = match secret.as_slice() {
            [one] => (*one).to_owned(),
            many => fingerprint(many.join(":").as_bytes()),
        };
        let source = spec
            .parts
            .iter()
            .find(|p| p.source.is_secret())
            .map_or("config", |p| p.source.as_str());
        Self {
            parts,
            fingerprint,
            digest: hasher.finalize().into(),
            source,
        }
    }
}

/// A part read from a secret source that is not itself secret (an AWS access key id: shown,
/// never fingerprinted or scrubbed).
fn is_public(part: &Part) -> bool {
    &*part.name == "access_key_id"
}

/// The ready-to-send form.
enum Form {
    Headers(Vec<(HeaderName, HeaderValue)>),
    Query(query::Pair),
    Path(path::Rendered),
    SigV4(Box<sigv4::Signer>),
}

/// A loaded, valid credential: every part read at the same load, so a request always sees
/// one consistent set of parts.
pub struct Credential {
    scheme: &'static str,
    form: Form,
    /// Caller headers that could carry or override this credential.
    stripped: Vec<HeaderName>,
    parts: Vec<PartInfo>,
    fingerprint: String,
    /// SHA-256 over the scheme and every part: equal means a reload changed nothing.
    digest: [u8; 32],
    source: &'static str,
    loaded_at: SystemTime,
    /// A minted token: its fingerprint, when it was fetched, when it expires.
    token: Option<TokenInfo>,
    /// Every form of every secret part, for taking an echoed credential out of a response
    /// (with the previous credential's, after a rotation).
    needles: Arc<scrub::Needles>,
    /// This credential's own forms (what its successor adds as the previous one's).
    own: Arc<scrub::Needles>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("scheme", &self.scheme)
            .field("fingerprint", &self.fingerprint)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Reads and validates every part, then renders the scheme's form.
    pub fn load(spec: &Spec) -> Result<Self, KeyError> {
        let several = spec.parts.len() > 1;
        let mut values: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(spec.parts.len());
        for part in &spec.parts {
            let checked = part
                .source
                .read()
                .and_then(|raw| validate_key(&raw).map(|k| Zeroizing::new(k.to_vec())));
            match checked {
                Ok(v) => values.push(v),
                Err(e) if several => {
                    return Err(KeyError::Part {
                        part: part.name.to_string(),
                        error: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Self::from_values(spec, &values)
    }

    /// Builds from part values already read (validated here too).
    pub fn from_values(spec: &Spec, values: &[impl AsRef<[u8]>]) -> Result<Self, KeyError> {
        let value = |i: usize| -> Result<&[u8], KeyError> {
            let raw = values.get(i).ok_or(KeyError::Empty)?;
            validate_key(raw.as_ref())
        };
        let (form, stripped) = match &spec.scheme {
            Scheme::Header { header, prefix } => (
                Form::Headers(vec![(header.clone(), header::value(prefix, value(0)?)?)]),
                vec![header.clone()],
            ),
            Scheme::Basic => (
                Form::Headers(vec![(
                    http::header::AUTHORIZATION,
                    basic::value(value(0)?, value(1)?)?,
                )]),
                Vec::new(),
            ),
            Scheme::Query { param } => {
                (Form::Query(query::Pair::new(param, value(0)?)), Vec::new())
            }
            Scheme::Path { templates } => (
                Form::Path(path::Rendered::new(templates, value(0)?)),
                Vec::new(),
            ),
            Scheme::Headers { names } => {
                let mut list = Vec::with_capacity(names.len());
                for (i, name) in names.iter().enumerate() {
                    list.push((name.clone(), header::value("", value(i)?)?));
                }
                (Form::Headers(list), names.clone())
            }
            Scheme::AwsSigV4(settings) if settings.role.is_some() => {
                return Err(KeyError::Minted);
            }
            Scheme::AwsSigV4(settings) => {
                let token = match spec.parts.len() {
                    3 => Some(value(2)?),
                    _ => None,
                };
                let signer = sigv4::Signer::new(settings.clone(), value(0)?, value(1)?, token)?;
                (
                    Form::SigV4(Box::new(signer)),
                    vec![sigv4::DATE, sigv4::SECURITY_TOKEN],
                )
            }
            // Minted by `control::token`, never loaded from the parts directly.
            Scheme::Minted(_) => return Err(KeyError::Minted),
        };
        let mut checked = Vec::with_capacity(spec.parts.len());
        for i in 0..spec.parts.len() {
            checked.push(value(i)?);
        }
        let id = Identity::of(spec, &checked, None);
        let mut secrets: Vec<&[u8]> = spec
            .parts
            .iter()
            .zip(&checked)
            .filter(|(p, _)| p.source.is_secret() && !is_public(p))
            .map(|(_, v)| *v)
            .collect();
        // A Basic header's own base64 (user:password) too.
        let rendered: Vec<Vec<u8>> = match &form {
            Form::Headers(list) if matches!(spec.scheme, Scheme::Basic) => list
                .iter()
                .filter_map(|(_, v)| v.as_bytes().strip_prefix(b"Basic ").map(<[u8]>::to_vec))
                .collect(),
            _ => Vec::new(),
        };
        secrets.extend(rendered.iter().map(Vec::as_slice));
        let needles = Arc::new(scrub::Needles::of(secrets));
        Ok(Self {
            scheme: spec.scheme.name(),
            form,
            stripped,
            parts: id.parts,
            fingerprint: id.fingerprint,
            digest: id.digest,
            source: id.source,
            loaded_at: SystemTime::now(),
            token: None,
            own: needles.clone(),
            needles,
        })
    }

    /// The same credential, also taking `previous`'s secrets out of responses: an answer may
    /// still quote the key it replaced (a key-management API listing both).
    #[must_use]
    pub fn with_previous(mut self, previous: &Credential) -> Self {
        self.needles = Arc::new(self.own.union(&previous.own));
        self
    }

    /// The forms of every secret part, for scanning a streamed response body.
    pub fn needles(&self) -> &Arc<Needles> {
        &self.needles
    }

    /// Whether `bytes` holds any form of any secret part.
    pub fn echoed_in(&self, bytes: &[u8]) -> bool {
        self.needles.found_in(bytes)
    }

    /// `Some(n)`: log this echo, `n` were left out since the last warning (one per period).
    pub fn may_warn_echo(&self) -> Option<u64> {
        self.needles.may_warn()
    }

    /// Replaces every form of every secret part in `bytes` with `*`; how many were found.
    pub fn scrub(&self, bytes: &mut [u8]) -> usize {
        self.needles.scrub(bytes)
    }

    /// A minted token's facts (`None` for static keys).
    pub fn token(&self) -> Option<&TokenInfo> {
        self.token.as_ref()
    }

    /// Puts the credential into a request whose final upstream form is known (origin-form
    /// target as forwarded, caller headers already stripped by `proxy::inject`). `template`:
    /// the path template the client used (`path` scheme), else 0.
    pub fn apply(
        &self,
        parts: &mut http::request::Parts,
        template: usize,
    ) -> Result<(), ApplyError> {
        match &self.form {
            Form::Headers(list) => {
                // `insert` replaces every existing value: exactly one of each leaves here.
                for (name, value) in list {
                    parts.headers.insert(name.clone(), value.clone());
                }
            }
            Form::Query(pair) => parts.uri = pair.apply(&parts.uri)?,
            Form::Path(rendered) => parts.uri = rendered.apply(&parts.uri, template)?,
            Form::SigV4(signer) => signer.sign(parts, SystemTime::now())?,
        }
        Ok(())
    }

    /// Caller headers that must go before [`apply`](Self::apply) (besides `Authorization`).
    pub fn stripped(&self) -> &[HeaderName] {
        &self.stripped
    }

    /// Rendered path prefixes holding the key (`path` scheme; empty otherwise), so link
    /// headers can take the key back out.
    pub fn key_paths(&self) -> Vec<&str> {
        match &self.form {
            Form::Path(r) => r.iter().collect(),
            Form::Headers(_) | Form::Query(_) | Form::SigV4(_) => Vec::new(),
        }
    }

    /// The SigV4 signer (`aws_sigv4`), for the body plan made before signing.
    pub fn signer(&self) -> Option<&sigv4::Signer> {
        match &self.form {
            Form::SigV4(s) => Some(s),
            _ => None,
        }
    }

    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The first secret part's source kind (`file`, `env`).
    pub fn source(&self) -> &'static str {
        self.source
    }

    pub fn parts(&self) -> &[PartInfo] {
        &self.parts
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Same scheme and parts: a reload that changes nothing keeps the old credential.
    pub fn same_as(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

#[cfg(test)]
mod tests;
