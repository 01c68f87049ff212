//! Where a credential's parts come from: a mounted file, an environment variable, or (for a
//! part that is not secret, such as a Basic user name) a value written in the config. This is
//! the one place that matches on the kind of source; a new source is a new variant here.

use std::io;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::KeyError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Read twice per load (a half-written file shows as two different reads).
    File(PathBuf),
    Env(String),
    /// Written in the config: not a secret, never fingerprinted.
    Value(String),
}

impl Source {
    /// `file`, `env` or `config` (the `source` field of `/credential`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Env(_) => "env",
            Self::Value(_) => "config",
        }
    }

    /// Secret parts are fingerprinted and never shown; a config value is neither.
    pub fn is_secret(&self) -> bool {
        !matches!(self, Self::Value(_))
    }

    /// The file to watch, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(p) => Some(p),
            Self::Env(_) | Self::Value(_) => None,
        }
    }

    /// The environment variable read, if any (`exec` keeps it from the child).
    pub fn env(&self) -> Option<&str> {
        match self {
            Self::Env(v) => Some(v),
            Self::File(_) | Self::Value(_) => None,
        }
    }

    /// For logs and `check`: `file PATH`, `env $VAR` or `config`. Never a value.
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => format!("file {}", p.display()),
            Self::Env(v) => format!("env ${v}"),
            Self::Value(_) => "config".to_owned(),
        }
    }

    /// The raw bytes, untrimmed and unvalidated.
    pub fn read(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match self {
            Self::File(path) => read_stable(path),
            Self::Env(var) => std::env::var(var)
                .map(|v| Zeroizing::new(v.into_bytes()))
                .map_err(|_| KeyError::EnvMissing(var.clone())),
            Self::Value(v) => Ok(Zeroizing::new(v.clone().into_bytes())),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_single_file_bind_mounts() {
        let info = "36 35 98:0 /mnt1 /var/run/secrets/api\\040key rw - ext3 /dev/root rw\n\
                    37 35 98:0 / /etc/sidekey rw - ext3 /dev/root rw\n";
        assert!(is_mount_point(info, Path::new("/var/run/secrets/api key")));
        assert!(is_mount_point(info, Path::new("/etc/sidekey")));
        assert!(!is_mount_point(info, Path::new("/etc/sidekey/key")));
    }

    #[test]
    fn describes_without_values() {
        let v = Source::Value("AC0123".into());
        assert_eq!(v.describe(), "config");
        assert!(!v.is_secret());
        assert_eq!(Source::Env("K".into()).describe(), "env $K");
    }
}
