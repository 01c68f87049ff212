//! The API key: read, validate, fingerprint, and keep unprintable.
//!
//! A [`Credential`] holds the ready-to-send header value (`<prefix><key>`, marked sensitive so
//! HTTP/2 never indexes it and `Debug` prints nothing). Its `Debug` shows only the
//! fingerprint: the first 12 hex characters of the key's SHA-256. Scratch buffers that held
//! the key are wiped on drop. Error values describe what is wrong, never the bytes.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{CredentialConfig, CredentialSource};

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Env,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Env => "env",
        }
    }
}

/// Why no key could be loaded. Never carries key material.
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
}

impl KeyError {
    /// `error` for I/O problems, `invalid` for content problems (metric label).
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::Read(_) | Self::EnvMissing(_) | Self::Unstable => "error",
            Self::Empty | Self::TooLong | Self::InvalidChar => "invalid",
        }
    }
}

/// A loaded, valid credential.
#[derive(Clone)]
pub struct Credential {
    header: HeaderName,
    value: HeaderValue,
    fingerprint: String,
    source: Source,
    loaded_at: SystemTime,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header)
            .field("fingerprint", &self.fingerprint)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

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

impl Credential {
    /// Builds the header value from a raw key (validated here).
    pub fn new(
        header: HeaderName,
        prefix: &str,
        raw: &[u8],
        source: Source,
    ) -> Result<Self, KeyError> {
        let key = validate_key(raw)?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(prefix.len() + key.len()));
        bytes.extend_from_slice(prefix.as_bytes());
        bytes.extend_from_slice(key);
        let mut value = HeaderValue::from_bytes(&bytes).map_err(|_| KeyError::InvalidChar)?;
        value.set_sensitive(true);
        Ok(Self {
            header,
            value,
            fingerprint: fingerprint(key),
            source,
            loaded_at: SystemTime::now(),
        })
    }

    /// Loads the key named by the config.
    pub fn load(cfg: &CredentialConfig) -> Result<Self, KeyError> {
        let (raw, source) = match &cfg.source {
            CredentialSource::File(path) => (read_stable(path)?, Source::File),
            CredentialSource::Env(var) => {
                let v = std::env::var(var).map_err(|_| KeyError::EnvMissing(var.clone()))?;
                (Zeroizing::new(v.into_bytes()), Source::Env)
            }
        };
        Self::new(cfg.header.clone(), &cfg.prefix, &raw, source)
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The full header value, marked sensitive.
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Same header and value: a reload that changes nothing keeps the old credential.
    pub fn same_as(&self, other: &Self) -> bool {
        self.header == other.header && self.value.as_bytes() == other.value.as_bytes()
    }
}

/// True when `path` looks like a Kubernetes `subPath` mount: its directory has no `..data`
/// entry and the file itself is a mount point (a bind mount of one file, which kubelet never
/// updates). Linux only; elsewhere always false.
pub fn looks_like_subpath_mount(path: &Path) -> bool {
    let has_data = path.parent().is_some_and(|d| d.join("..data").exists());
    if has_data {
        return false;
    }
    let Ok(full) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    is_mount_point(&mountinfo, &full)
}

/// Looks `path` up among the mount points (5th field, octal-escaped) of a mountinfo text.
fn is_mount_point(mountinfo: &str, path: &Path) -> bool {
    let want = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_octal(mp) == want)
}

fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = rest.get(i + 4..).unwrap_or_default();
            }
            None => {
                out.push('\\');
                rest = rest.get(i + 1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads the file twice; a writer caught mid-write shows up as two different reads.
fn read_stable(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let read = |p: &Path| {
        std::fs::read(p)
            .map(Zeroizing::new)
            .map_err(|e| read_error(&e))
    };
    let first = read(path)?;
    let second = read(path)?;
    if first != second {
        return Err(KeyError::Unstable);
    }
    Ok(first)
}

fn read_error(e: &io::Error) -> KeyError {
    // The io::Error text names the failure kind only (no path, no content).
    KeyError::Read(e.kind().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_keys() {
        assert_eq!(validate_key(b"  sk_live_1\n"), Ok(&b"sk_live_1"[..]));
        assert_eq!(validate_key(b" \n\t"), Err(KeyError::Empty));
        assert_eq!(validate_key(b"a b"), Err(KeyError::InvalidChar));
        assert_eq!(validate_key(b"a\nb"), Err(KeyError::InvalidChar));
        assert_eq!(validate_key("ké".as_bytes()), Err(KeyError::InvalidChar));
        assert_eq!(
            validate_key(&[b'a'; MAX_KEY_LEN + 1]),
            Err(KeyError::TooLong)
        );
        assert!(validate_key(&[b'a'; MAX_KEY_LEN]).is_ok());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = Credential::new(
            http::header::AUTHORIZATION,
            "Bearer ",
            b"sk_secret_value",
            Source::File,
        )
        .unwrap();
        let dbg = format!("{c:?} {:?}", c.value());
        assert!(!dbg.contains("sk_secret_value"), "{dbg}");
        assert!(dbg.contains(c.fingerprint()));
        assert_eq!(c.fingerprint().len(), 12);
        assert_eq!(c.value().as_bytes(), b"Bearer sk_secret_value");
    }

    #[test]
    fn finds_single_file_bind_mounts() {
        let info = "36 35 98:0 /mnt1 /var/run/secrets/api\\040key rw - ext3 /dev/root rw\n\
                    37 35 98:0 / /etc/sidekey rw - ext3 /dev/root rw\n";
        assert!(is_mount_point(info, Path::new("/var/run/secrets/api key")));
        assert!(is_mount_point(info, Path::new("/etc/sidekey")));
        assert!(!is_mount_point(info, Path::new("/etc/sidekey/key")));
    }

    #[test]
    fn fingerprint_is_sha256_prefix() {
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint(b"abc"), "ba7816bf8f01");
    }
}
