//! The ground floor of config validation: where a file's text and directory are (`Ctx`), how
//! an error names file, key and line, and the small parsers every section uses. Every
//! section file imports this; it imports none of them (no circle through `validate`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::{ConfigError, line_of};

pub(crate) struct Ctx<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub dir: &'a Path,
}

impl Ctx<'_> {
    pub(crate) fn err<T>(
        &self,
        key: &str,
        span: Option<std::ops::Range<usize>>,
        msg: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(error_in(self.path, self.text, key, span, msg))
    }
}

pub(crate) fn error_in(
    path: &Path,
    text: &str,
    key: &str,
    span: Option<std::ops::Range<usize>>,
    msg: impl Into<String>,
) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        line: span.map(|s| line_of(text, s.start)),
        key: key.to_owned(),
        message: msg.into(),
    }
}

pub(crate) fn address(
    ctx: &Ctx<'_>,
    key: &str,
    v: Option<&Spanned<String>>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let text = v.map_or(default, |s| s.get_ref().as_str());
    text.parse().or_else(|_| {
        ctx.err(
            key,
            v.map(Spanned::span),
            format!("`{text}` is not an IP:port address"),
        )
    })
}

pub(crate) fn duration(
    ctx: &Ctx<'_>,
    key: &str,
    v: Option<&Spanned<String>>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = v.map_or(default, |s| s.get_ref().as_str());
    humantime::parse_duration(text).or_else(|e| {
        ctx.err(
            key,
            v.map(Spanned::span),
            format!("`{text}` is not a duration like \"5s\" or \"250ms\": {e}"),
        )
    })
}

/// `4096`, `512KiB`, `10MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}
