//! `RawConfig` -> `Config`: defaults, types and cross-field rules. Each rule says which key
//! it is about and points at that key's line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use super::raw::{RawConfig, RawPermissions};
use super::{
    Admin, Config, ConfigError, CredentialConfig, CredentialSource, Expect, Identity, Limits,
    Listener, Mode, NamedCredential, PolicyTest, Principal, Protocol, Reload, Runtime, Service,
    Upstream, line_of,
};
use crate::policy::{Pattern, RouteSpec};

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

fn error_in(
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

/// `permissions_file` may sit at the top level or under `[service]`; not both.
pub(crate) fn catalogue_file(
    path: &Path,
    text: &str,
    raw: &RawConfig,
) -> Result<Option<String>, ConfigError> {
    let nested = raw
        .service
        .as_ref()
        .and_then(|s| s.permissions_file.as_ref());
    match (&raw.permissions_file, nested) {
        (Some(_), Some(b)) => Err(error_in(
            path,
            text,
            "service.permissions_file",
            Some(b.span()),
            "set `permissions_file` once",
        )),
        (Some(f), None) | (None, Some(f)) => Ok(Some(f.get_ref().clone())),
        (None, None) => Ok(None),
    }
}

pub(crate) fn validate(
    ctx: &Ctx<'_>,
    raw: RawConfig,
    file_catalogue: Option<(PathBuf, String, RawPermissions)>,
) -> Result<Config, ConfigError> {
    let listener = Listener {
        address: address(
            ctx,
            "listener.address",
            raw.listener.address.as_ref(),
            "127.0.0.1:8080",
        )?,
        header_read_timeout: duration(
            ctx,
            "listener.header_read_timeout",
            raw.listener.header_read_timeout.as_ref(),
            "10s",
        )?,
        tls: raw
            .listener
            .tls
            .as_ref()
            .map(|t| super::gateway::listener_tls(ctx, t.get_ref())),
    };
    if !listener.address.ip().is_loopback() && listener.tls.is_none() {
        let span = raw.listener.address.as_ref().map(Spanned::span);
        return ctx.err("listener.address", span, "a plain-HTTP listener must be bound to a loopback address (127.0.0.1 or ::1); beyond loopback, configure [listener.tls]");
    }
    let admin = Admin {
        address: address(
            ctx,
            "admin.address",
            raw.admin.address.as_ref(),
            "127.0.0.1:9901",
        )?,
    };
    let Some(up) = raw.upstream else {
        return ctx.err("upstream", None, "missing table [upstream] with `url`");
    };
    let upstream = upstream(ctx, up)?;
    let default_credential = match &raw.credential {
        Some(c) => Some(credential(ctx, "credential", c)?),
        None => None,
    };

    // The catalogue: inline [permissions] and the file may both contribute, never the same name.
    let mut catalogue = Vec::new();
    let mut names: Vec<Arc<str>> = Vec::new();
    let inline = raw
        .permissions
        .map(|p| (ctx.path.to_owned(), ctx.text.to_owned(), p));
    let permissions_path = file_catalogue.as_ref().map(|(p, _, _)| p.clone());
    for (file, text, perms) in inline.into_iter().chain(file_catalogue) {
        for (name, routes) in perms {
            let key = format!("permissions.{name}");
            if names.iter().any(|n| **n == *name) {
                return Err(error_in(
                    &file,
                    &text,
                    &key,
                    Some(routes.span()),
                    "permission defined twice (inline and in permissions_file)",
                ));
            }
            if routes.get_ref().is_empty() {
                return Err(error_in(
                    &file,
                    &text,
                    &key,
                    Some(routes.span()),
                    "a permission needs at least one route",
                ));
            }
            let permission: Arc<str> = name.as_str().into();
            for route in routes.into_inner() {
                let pattern = Pattern::parse(route.get_ref()).map_err(|e| {
                    error_in(
                        &file,
                        &text,
                        &key,
                        Some(route.span()),
                        format!("route `{}`: {e}", route.get_ref()),
                    )
                })?;
                catalogue.push(RouteSpec {
                    permission: permission.clone(),
                    text: route.get_ref().as_str().into(),
                    pattern,
                });
            }
            names.push(permission);
        }
    }

    let mut credentials: Vec<NamedCredential> = default_credential
        .iter()
        .map(|c| NamedCredential {
            name: "default".into(),
            config: c.clone(),
        })
        .collect();
    let gateway = !raw.caller.is_empty();
    let (service, principals) = match (raw.service, gateway) {
        (Some(svc), true) => {
            return ctx.err(
                "service",
                Some(svc.name.span()),
                "use either [service] (one local service) or [[caller]] entries (a gateway), not both",
            );
        }
        (Some(svc), false) => {
            let name = svc.name.get_ref().trim();
            if name.is_empty() {
                return ctx.err("service.name", Some(svc.name.span()), "must not be empty");
            }
            let allow = super::gateway::grants(ctx, "service.allow", &svc.allow, &names)?;
            if default_credential.is_none() {
                return ctx.err(
                    "credential",
                    None,
                    "missing table [credential] with `file` or `env`",
                );
            }
            let mode = mode(ctx, svc.mode.as_ref())?;
            let principal = Principal {
                name: name.into(),
                identity: Identity::Local,
                allow: allow.clone(),
                credential: 0,
                rate: None,
                max_concurrent: None,
            };
            (
                Service {
                    name: name.into(),
                    allow,
                    mode,
                },
                vec![principal],
            )
        }
        (None, true) => {
            let client_ca = listener
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some());
            let principals = super::gateway::callers(
                ctx,
                raw.caller,
                &names,
                default_credential.as_ref(),
                &mut credentials,
                client_ca,
            )?;
            let service = Service {
                name: "gateway".into(),
                allow: Vec::new(),
                mode: Mode::Enforce,
            };
            (service, principals)
        }
        (None, false) => {
            return ctx.err(
                "service",
                None,
                "missing table [service] with `name` and `allow` (or [[caller]] entries for a gateway)",
            );
        }
    };

    let runtime = Runtime {
        workers: workers(ctx, raw.runtime.workers.as_ref())?,
        shutdown_grace: duration(
            ctx,
            "runtime.shutdown_grace",
            raw.runtime.shutdown_grace.as_ref(),
            "25s",
        )?,
        shutdown_idle: duration(
            ctx,
            "runtime.shutdown_idle",
            raw.runtime.shutdown_idle.as_ref(),
            "2s",
        )?,
    };
    let reload = Reload {
        interval: duration(ctx, "reload.interval", raw.reload.interval.as_ref(), "10s")?,
        debounce: duration(
            ctx,
            "reload.debounce",
            raw.reload.debounce.as_ref(),
            "200ms",
        )?,
    };
    let limits = limits(ctx, &raw.limits)?;
    let mut tests = Vec::with_capacity(raw.test.len());
    for (i, t) in raw.test.iter().enumerate() {
        let key = format!("test[{i}]");
        let mut parts = t.request.get_ref().split_ascii_whitespace();
        let (Some(method), Some(target), None) = (parts.next(), parts.next(), parts.next()) else {
            return ctx.err(
                &format!("{key}.request"),
                Some(t.request.span()),
                "expected \"METHOD /target\"",
            );
        };
        let expect = match t.expect.get_ref().as_str() {
            "allow" => Expect::Allow,
            "deny" => Expect::Deny,
            "reject" => Expect::Reject,
            other => {
                return ctx.err(
                    &format!("{key}.expect"),
                    Some(t.expect.span()),
                    format!("`{other}` is not one of allow, deny, reject"),
                );
            }
        };
        let principal = match (&t.caller, gateway) {
            (None, false) => 0,
            (Some(c), true) => match principals.iter().position(|p| *p.name == **c.get_ref()) {
                Some(i) => i,
                None => {
                    return ctx.err(
                        &format!("{key}.caller"),
                        Some(c.span()),
                        format!("no [[caller]] is named `{}`", c.get_ref()),
                    );
                }
            },
            (None, true) => {
                return ctx.err(
                    &format!("{key}.caller"),
                    Some(t.request.span()),
                    "a gateway's tests name the `caller` whose grants they check",
                );
            }
            (Some(c), false) => {
                return ctx.err(
                    &format!("{key}.caller"),
                    Some(c.span()),
                    "`caller` is for gateway configs ([[caller]] entries)",
                );
            }
        };
        tests.push(PolicyTest {
            principal,
            request: t.request.get_ref().clone(),
            method: method.to_owned(),
            target: target.to_owned(),
            expect,
            line: line_of(ctx.text, t.request.span().start),
        });
    }
    if reload.interval.is_zero() {
        return ctx.err(
            "reload.interval",
            raw.reload.interval.as_ref().map(Spanned::span),
            "must be greater than zero",
        );
    }
    Ok(Config {
        path: ctx.path.to_owned(),
        permissions_path,
        digest: [0; 32],
        listener,
        admin,
        upstream,
        credentials,
        service,
        principals,
        gateway,
        catalogue,
        runtime,
        reload,
        limits,
        tests,
    })
}

fn limits(ctx: &Ctx<'_>, raw: &super::raw::RawLimits) -> Result<Limits, ConfigError> {
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
    Ok(Limits {
        max_in_flight,
        max_request_body,
        body_idle_timeout,
    })
}

/// `4096`, `512KiB`, `10MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
fn parse_size(text: &str) -> Option<u64> {
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

fn address(
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

fn duration(
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

fn workers(ctx: &Ctx<'_>, v: Option<&Spanned<i64>>) -> Result<usize, ConfigError> {
    let n = v.map_or(1, |w| *w.get_ref());
    match usize::try_from(n) {
        Ok(n @ 1..=256) => Ok(n),
        _ => ctx.err(
            "runtime.workers",
            v.map(Spanned::span),
            "must be between 1 and 256",
        ),
    }
}

fn upstream(ctx: &Ctx<'_>, up: super::raw::RawUpstream) -> Result<Upstream, ConfigError> {
    let key = "upstream.url";
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
                        "upstream.ca_file",
                        Some(f.span()),
                        format!("{} holds no PEM certificate", path.display()),
                    );
                }
                Err(e) => {
                    return ctx.err(
                        "upstream.ca_file",
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
                "upstream.protocol",
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
            "upstream.connect_timeout",
            up.connect_timeout.as_ref(),
            "5s",
        )?,
        response_timeout: duration(
            ctx,
            "upstream.response_timeout",
            up.response_timeout.as_ref(),
            "60s",
        )?,
        pool_idle_timeout: duration(
            ctx,
            "upstream.pool_idle_timeout",
            up.pool_idle_timeout.as_ref(),
            "90s",
        )?,
        allow_plaintext: up.allow_plaintext_upstream,
    })
}

fn mode(ctx: &Ctx<'_>, raw: Option<&Spanned<String>>) -> Result<Mode, ConfigError> {
    match raw.map(|m| m.get_ref().as_str()) {
        None | Some("enforce") => Ok(Mode::Enforce),
        Some("report") => Ok(Mode::Report),
        Some(other) => ctx.err(
            "service.mode",
            raw.map(Spanned::span),
            format!("`{other}` is not one of enforce, report"),
        ),
    }
}

/// A key source (`[credential]`, or a caller's own, named by `key`).
pub(crate) fn credential(
    ctx: &Ctx<'_>,
    key: &str,
    cred: &super::raw::RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let source = match (&cred.file, &cred.env) {
        (Some(f), None) => CredentialSource::File(ctx.dir.join(f.get_ref())),
        (None, Some(e)) if !e.get_ref().is_empty() => CredentialSource::Env(e.get_ref().clone()),
        (None, Some(e)) => {
            return ctx.err(
                &format!("{key}.env"),
                Some(e.span()),
                "must name an environment variable",
            );
        }
        (Some(_), Some(e)) => {
            return ctx.err(key, Some(e.span()), "set exactly one of `file` or `env`");
        }
        (None, None) => return ctx.err(key, None, "set exactly one of `file` or `env`"),
    };
    let header_text = cred
        .header
        .as_ref()
        .map_or("authorization", |h| h.get_ref().as_str());
    let header_span = cred.header.as_ref().map(Spanned::span);
    let Ok(header) = HeaderName::from_bytes(header_text.as_bytes()) else {
        return ctx.err(
            &format!("{key}.header"),
            header_span,
            format!("`{header_text}` is not a header name"),
        );
    };
    if crate::inject::is_reserved(&header) {
        return ctx.err(
            &format!("{key}.header"),
            header_span,
            format!("`{header_text}` is a hop-by-hop or routing header"),
        );
    }
    let prefix = cred
        .prefix
        .as_ref()
        .map_or("Bearer ", |p| p.get_ref().as_str())
        .to_owned();
    if HeaderValue::from_str(&prefix).is_err() {
        return ctx.err(
            &format!("{key}.prefix"),
            cred.prefix.as_ref().map(Spanned::span),
            "must be printable ASCII",
        );
    }
    Ok(CredentialConfig {
        source,
        header,
        prefix,
    })
}
