//! The `[upstream]`, `[credential]` and `[limits]` sections: types, defaults and the rules
//! that keep the key on verified TLS to one origin.

use http::Uri;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use super::ctx::{Ctx, duration, parse_size};
use super::{ConfigError, Limits, Protocol, Upstream};

pub(super) fn limits(ctx: &Ctx<'_>, raw: &super::raw::RawLimits) -> Result<Limits, ConfigError> {
    let max_in_flight = match raw.max_in_flight.as_ref() {
        None => 1024,
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                return ctx.err(
                    "limits.max_in_flight",
                    Some(v.span()),
                    "must be a positive number",
                );
            }
        },
    };
    let max_request_body = match raw.max_request_body.as_ref() {
        None => None,
        Some(v) => match parse_size(v.get_ref()) {
            Some(n) => Some(n),
            None => {
                return ctx.err(
                    "limits.max_request_body",
                    Some(v.span()),
                    format!("`{}` is not a size like \"10MiB\" or \"4096\"", v.get_ref()),
                );
            }
        },
    };
    let body_idle_timeout = duration(
        ctx,
        "limits.body_idle_timeout",
        raw.body_idle_timeout.as_ref(),
        "120s",
    )?;
    if body_idle_timeout.is_zero() {
        return ctx.err(
            "limits.body_idle_timeout",
            raw.body_idle_timeout.as_ref().map(Spanned::span),
            "must be greater than zero",
        );
    }
    let websocket_idle_timeout = duration(
        ctx,
        "limits.websocket_idle_timeout",
        raw.websocket_idle_timeout.as_ref(),
        "10m",
    )?;
    if websocket_idle_timeout.is_zero() {
        return ctx.err(
            "limits.websocket_idle_timeout",
            raw.websocket_idle_timeout.as_ref().map(Spanned::span),
            "must be greater than zero",
        );
    }
    let websocket_max_duration = match raw.websocket_max_duration.as_ref() {
        None => None,
        Some(v) => {
            let d = duration(ctx, "limits.websocket_max_duration", Some(v), "0s")?;
            if d.is_zero() {
                return ctx.err(
                    "limits.websocket_max_duration",
                    Some(v.span()),
                    "must be greater than zero (leave it out for no limit)",
                );
            }
            Some(d)
        }
    };
    let max_websockets = match raw.max_websockets.as_ref() {
        None => 256,
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) => n,
            Err(_) => {
                return ctx.err(
                    "limits.max_websockets",
                    Some(v.span()),
                    "must be zero (no tunnels) or a positive number",
                );
            }
        },
    };
    Ok(Limits {
        max_in_flight,
        max_request_body,
        body_idle_timeout,
        websocket_idle_timeout,
        websocket_max_duration,
        max_websockets,
        shared: super::limits_shared::shared(ctx, raw.shared.as_ref())?,
    })
}

/// An origin's settings; `table` is `upstream` or `api.NAME` (for error keys).
pub(super) fn upstream(
    ctx: &Ctx<'_>,
    table: &str,
    up: super::raw::RawUpstream,
) -> Result<Upstream, ConfigError> {
    let url_key = format!("{table}.url");
    let key = url_key.as_str();
    let k = |name: &str| format!("{table}.{name}");
    let span = Some(up.url.span());
    let url = up.url.get_ref();
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return ctx.err(key, span, format!("`{url}` is not a URL: {e}")),
    };
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        return ctx.err(
            key,
            span,
            "must be an absolute URL like https://api.example.com",
        );
    };
    if authority.as_str().contains('@') {
        return ctx.err(key, span, "must not carry user information");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return ctx.err(
            key,
            span,
            "must be an origin only (no path or query): request paths are forwarded as they are",
        );
    }
    match scheme.as_str() {
        "https" => {}
        "http" if up.allow_plaintext_upstream => {}
        "http" => return ctx.err(key, span, "plaintext upstreams would expose the key; use https (or, for tests only, allow_plaintext_upstream = true)"),
        other => return ctx.err(key, span, format!("unsupported scheme `{other}`")),
    }
    let extra_roots = match &up.ca_file {
        Some(f) => {
            let path = ctx.dir.join(f.get_ref());
            let certs: Result<Vec<_>, _> =
                CertificateDer::pem_file_iter(&path).and_then(Iterator::collect);
            match certs {
                Ok(c) if !c.is_empty() => c,
                Ok(_) => {
                    return ctx.err(
                        &k("ca_file"),
                        Some(f.span()),
                        format!("{} holds no PEM certificate", path.display()),
                    );
                }
                Err(e) => {
                    return ctx.err(
                        &k("ca_file"),
                        Some(f.span()),
                        format!("cannot read {}: {e}", path.display()),
                    );
                }
            }
        }
        None => Vec::new(),
    };
    let protocol = match up.protocol.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("auto") => Protocol::Auto,
        Some("http1") => Protocol::Http1,
        Some("http2") => Protocol::Http2,
        Some(other) => {
            return ctx.err(
                &k("protocol"),
                up.protocol.as_ref().map(Spanned::span),
                format!("`{other}` is not one of auto, http1, http2"),
            );
        }
    };
    Ok(Upstream {
        protocol,
        url: url.clone(),
        scheme,
        authority,
        extra_roots,
        connect_timeout: duration(
            ctx,
            &k("connect_timeout"),
            up.connect_timeout.as_ref(),
            "5s",
        )?,
        response_timeout: duration(
            ctx,
            &k("response_timeout"),
            up.response_timeout.as_ref(),
            "60s",
        )?,
        pool_idle_timeout: duration(
            ctx,
            &k("pool_idle_timeout"),
            up.pool_idle_timeout.as_ref(),
            "90s",
        )?,
        allow_plaintext: up.allow_plaintext_upstream,
        connect_to: match &up.connect_to {
            None => None,
            Some(v) => match v.get_ref().parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    return ctx.err(
                        &k("connect_to"),
                        Some(v.span()),
                        format!("`{}` is not an address like 127.0.0.1:4443", v.get_ref()),
                    );
                }
            },
        },
        placeholder_env: match &up.placeholder_env {
            None => None,
            Some(v) if valid_env_name(v.get_ref()) => Some(v.get_ref().clone()),
            Some(v) => {
                return ctx.err(
                    &k("placeholder_env"),
                    Some(v.span()),
                    "must be an environment variable name (letters, digits, `_`)",
                );
            }
        },
    })
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
