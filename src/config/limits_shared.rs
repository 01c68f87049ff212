//! `[limits.shared]`: caller rates kept in Redis (or Valkey) so that every replica of a
//! gateway admits the configured rate together, not each on its own.

use std::path::PathBuf;
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use super::ConfigError;
use super::ctx::{Ctx, duration};
use super::raw::RawSharedLimits;

/// What decides when Redis cannot (down, slow past `timeout`, refusing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// This replica's own in-process limiter (the caller gets its rate per replica).
    Local,
    /// Refuse with 429 until Redis answers again.
    Deny,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Deny => "deny",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SharedLimits {
    /// As written (it never holds a password: that is refused, see `password_file`).
    pub redis_url: String,
    /// `host:port`, for logs and the status page.
    pub server: String,
    pub tls: bool,
    /// Hot-reloaded like API keys; `None` connects without `AUTH` (or with the URL's user).
    pub password_file: Option<PathBuf>,
    /// PEM roots for `rediss://` (instead of the webpki roots), read at load.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
    pub on_error: OnError,
    pub key_prefix: String,
}

pub(super) fn shared(
    ctx: &Ctx<'_>,
    raw: Option<&RawSharedLimits>,
) -> Result<Option<SharedLimits>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let Some(url) = raw.redis_url.as_ref() else {
        return ctx.err(
            "limits.shared.redis_url",
            None,
            "is required in [limits.shared] (redis://host:6379/0 or rediss://...)",
        );
    };
    let key = "limits.shared.redis_url";
    let span = Some(url.span());
    let text = url.get_ref().trim();
    if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
        return ctx.err(key, span, "must start with redis:// or rediss://");
    }
    let info = match text.into_connection_info() {
        Ok(info) => info,
        Err(e) => return ctx.err(key, span, format!("is not a Redis URL: {e}")),
    };
    if info.redis_settings().password().is_some() {
        return ctx.err(
            key,
            span,
            "must not hold a password (it would sit in config, logs and process listings); put it in limits.shared.password_file",
        );
    }
    let (server, tls) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (format!("{host}:{port}"), false),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            ..
        } => (format!("{host}:{port}"), true),
        ConnectionAddr::TcpTls { .. } => {
            return ctx.err(
                key,
                span,
                "`#insecure` turns off certificate checks; give the server's CA in limits.shared.ca_file instead",
            );
        }
        _ => return ctx.err(key, span, "must be a TCP address (redis:// or rediss://)"),
    };
    let ca_pem = match &raw.ca_file {
        None => None,
        Some(_) if !tls => {
            return ctx.err(
                "limits.shared.ca_file",
                raw.ca_file.as_ref().map(Spanned::span),
                "only applies to rediss:// URLs",
            );
        }
        Some(f) => Some(ca_file(ctx, f)?),
    };
    let timeout = duration(ctx, "limits.shared.timeout", raw.timeout.as_ref(), "20ms")?;
    if timeout.is_zero() || timeout > Duration::from_secs(5) {
        return ctx.err(
            "limits.shared.timeout",
            raw.timeout.as_ref().map(Spanned::span),
            "must be more than zero and at most 5s (it is added to a request whenever Redis is slow)",
        );
    }
    let on_error = match raw.on_error.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("local") => OnError::Local,
        Some("deny") => OnError::Deny,
        Some(other) => {
            return ctx.err(
                "limits.shared.on_error",
                raw.on_error.as_ref().map(Spanned::span),
                format!("`{other}` is not one of local, deny"),
            );
        }
    };
    let key_prefix = raw
        .key_prefix
        .as_ref()
        .map_or("sidekey:", |p| p.get_ref().as_str());
    if key_prefix.len() > 128 || key_prefix.chars().any(|c| c.is_control() || c == ' ') {
        return ctx.err(
            "limits.shared.key_prefix",
            raw.key_prefix.as_ref().map(Spanned::span),
            "must be at most 128 characters, without spaces or control characters",
        );
    }
    Ok(Some(SharedLimits {
        redis_url: text.to_owned(),
        server,
        tls,
        password_file: raw
            .password_file
            .as_ref()
            .map(|f| ctx.dir.join(f.get_ref())),
        ca_pem,
        timeout,
        on_error,
        key_prefix: key_prefix.to_owned(),
    }))
}

fn ca_file(ctx: &Ctx<'_>, f: &Spanned<String>) -> Result<Vec<u8>, ConfigError> {
    let path = ctx.dir.join(f.get_ref());
    let key = "limits.shared.ca_file";
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        Err(e) => {
            return ctx.err(
                key,
                Some(f.span()),
                format!("cannot read {}: {e}", path.display()),
            );
        }
    };
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(c) if !c.is_empty() => Ok(pem),
        _ => ctx.err(
            key,
            Some(f.span()),
            format!("{} holds no PEM certificate", path.display()),
        ),
    }
}
