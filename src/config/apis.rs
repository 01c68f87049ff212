//! The APIs a config fronts: either the single-API shape (`[upstream]` + `[credential]` + a
//! catalogue: one API named `default` at `/`) or `[api.NAME]` tables, each with its origin,
//! `path_prefix` and/or own `listen` address, catalogue and key. The two are never mixed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use toml::Spanned;

use super::credential::credential;
use super::ctx::{Ctx, address, error_in};
use super::raw::{RawApi, RawConfig, RawCredential, RawPermissions, RawUpstream};
use super::sections::upstream;
use super::{Api, ConfigError, CredentialConfig};
use crate::policy::{Pattern, RouteSpec};

/// A catalogue file read by `Config::load`: path, text, its `[permissions]`.
pub(super) type CatalogueFile = (PathBuf, String, RawPermissions);

/// The APIs with what the rest of validation needs about each.
pub(super) struct Drafted {
    pub apis: Vec<Api>,
    /// Per API: its catalogue's permission names.
    pub names: Vec<Vec<Arc<str>>>,
    /// Per API: its own key, if it has one.
    pub keys: Vec<Option<CredentialConfig>>,
}

/// Names that end up as metric labels: 1-64 of letters, digits, `-`, `_`, `.`, `:`.
pub(super) fn is_label_name(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
    !name.is_empty() && name.len() <= 64 && name.bytes().all(allowed)
}

/// Refuses a config that mixes `[api.NAME]` with the single-API tables.
pub(super) fn check_shape(ctx: &Ctx<'_>, raw: &RawConfig) -> Result<(), ConfigError> {
    if raw.api.is_empty() {
        return Ok(());
    }
    let nested = raw
        .service
        .as_ref()
        .and_then(|s| s.permissions_file.as_ref());
    let clash = [
        ("upstream", raw.upstream.as_ref().map(|u| u.url.span())),
        ("credential", raw.credential.as_ref().map(|_| 0..0)),
        ("permissions", raw.permissions.as_ref().map(|_| 0..0)),
        (
            "permissions_file",
            raw.permissions_file.as_ref().map(Spanned::span),
        ),
        ("service.permissions_file", nested.map(Spanned::span)),
    ];
    for (key, span) in clash {
        if let Some(span) = span {
            let span = (!span.is_empty()).then_some(span);
            return ctx.err(
                key,
                span,
                format!("[api.NAME] tables and the single-API `{key}` cannot be mixed: move it into an [api.NAME] table (or drop the [api.*] tables)"),
            );
        }
    }
    Ok(())
}

/// The single-API shape: one API named `default` at `/`.
pub(super) fn single(
    ctx: &Ctx<'_>,
    up: Option<RawUpstream>,
    key: Option<&RawCredential>,
    inline: Option<RawPermissions>,
    file: Option<CatalogueFile>,
) -> Result<Drafted, ConfigError> {
    let Some(up) = up else {
        return ctx.err(
            "upstream",
            None,
            "missing table [upstream] with `url` (or [api.NAME] tables)",
        );
    };
    let verify_text = up.verify.clone();
    let upstream = upstream(ctx, "upstream", up)?;
    let key = key.map(|c| credential(ctx, "credential", c)).transpose()?;
    let permissions_path = file.as_ref().map(|(p, _, _)| p.clone());
    let (catalogue, names) = catalogue(ctx, "", inline, file)?;
    let verify = verify(ctx, "upstream.verify", verify_text.as_ref(), &catalogue)?;
    Ok(Drafted {
        apis: vec![Api {
            name: "default".into(),
            prefix: Some("/".into()),
            listen: None,
            upstream,
            catalogue,
            permissions_path,
            verify,
            allowed_hosts: Vec::new(),
            scrub_headers: true,
            scrub_bodies: false,
            wildcard_hosts: Vec::new(),
        }],
        names: vec![names],
        keys: vec![key],
    })
}

/// `[api.NAME]` tables, in name order.
pub(super) fn named(
    ctx: &Ctx<'_>,
    raw: BTreeMap<String, Spanned<RawApi>>,
    mut files: BTreeMap<String, CatalogueFile>,
) -> Result<Drafted, ConfigError> {
    let mut out = Drafted {
        apis: Vec::with_capacity(raw.len()),
        names: Vec::with_capacity(raw.len()),
        keys: Vec::with_capacity(raw.len()),
    };
    for (name, spanned) in raw {
        let span = spanned.span();
        let api = spanned.into_inner();
        let table = format!("api.{name}");
        if !is_label_name(&name) {
            return ctx.err(&table, Some(span), "an API name must be 1-64 characters of letters, digits, `-`, `_`, `.` or `:` (it is a metric label)");
        }
        let prefix = match &api.path_prefix {
            Some(p) => Some(prefix(ctx, &format!("{table}.path_prefix"), p)?),
            None => None,
        };
        if let Some(p) = &prefix {
            if let Some(other) = out.apis.iter().find(|a| a.prefix.as_deref() == Some(&**p)) {
                let why = if &**p == "/" {
                    "at most one API may take \"/\"".to_owned()
                } else {
                    format!("`{p}` is already the prefix of api.{}", other.name)
                };
                return ctx.err(
                    &format!("{table}.path_prefix"),
                    api.path_prefix.as_ref().map(Spanned::span),
                    why,
                );
            }
        }
        let listen = match &api.listen {
            Some(l) => {
                let key = format!("{table}.listen");
                let addr = address(ctx, &key, Some(l), "")?;
                if !addr.ip().is_loopback() {
                    return ctx.err(
                        &key,
                        Some(l.span()),
                        "an API's own listener is plain HTTP: it must be a loopback address",
                    );
                }
                Some(addr)
            }
            None => None,
        };
        if prefix.is_none() && listen.is_none() {
            return ctx.err(&table, Some(span), "set `path_prefix` (reached on the listener under that path) or `listen` (its own listener), or both");
        }
        let key = match &api.credential {
            Some(c) => Some(credential(
                ctx,
                &format!("{table}.credential"),
                c.get_ref(),
            )?),
            None => None,
        };
        let up = RawUpstream {
            url: api.url,
            ca_file: api.ca_file,
            connect_timeout: api.connect_timeout,
            response_timeout: api.response_timeout,
            pool_idle_timeout: api.pool_idle_timeout,
            protocol: api.protocol,
            allow_plaintext_upstream: api.allow_plaintext_upstream,
            connect_to: api.connect_to,
            placeholder_env: api.placeholder_env,
            verify: None,
        };
        let allowed_hosts = api.allowed_hosts;
        let (scrub_headers, scrub_bodies) = match api.scrub.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("headers") => (true, false),
            Some("bodies") => (true, true),
            Some("off") => (false, false),
            Some(other) => {
                return ctx.err(
                    &format!("{table}.scrub"),
                    api.scrub.as_ref().map(Spanned::span),
                    format!("`{other}`: use headers (the default), bodies or off"),
                );
            }
        };
        let wildcard_hosts = wildcards(ctx, &table, api.hosts.as_ref())?;
        let upstream = upstream(ctx, &table, up)?;
        let file = files.remove(&name);
        let permissions_path = file.as_ref().map(|(p, _, _)| p.clone());
        let (catalogue, names) = catalogue(ctx, &format!("{table}."), api.permissions, file)?;
        if catalogue.is_empty() {
            return ctx.err(
                &table,
                Some(span),
                "an API needs a catalogue: `permissions_file` or an [api.NAME.permissions] table",
            );
        }
        let verify = verify(
            ctx,
            &format!("{table}.verify"),
            api.verify.as_ref(),
            &catalogue,
        )?;
        out.apis.push(Api {
            name: name.as_str().into(),
            prefix,
            listen,
            upstream,
            catalogue,
            permissions_path,
            verify,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            scrub_headers,
            scrub_bodies,
            wildcard_hosts,
        });
        out.names.push(names);
        out.keys.push(key);
    }
    Ok(out)
}

/// `/` or `/seg[/seg...]` of unreserved characters, no dot segments, no trailing `/`.
fn prefix(ctx: &Ctx<'_>, key: &str, p: &Spanned<String>) -> Result<Arc<str>, ConfigError> {
    let text = p.get_ref().trim();
    if text == "/" {
        return Ok("/".into());
    }
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let ok = text.starts_with('/')
        && text[1..]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(unreserved));
    if !ok {
        return ctx.err(key, Some(p.span()), format!("`{text}` is not a path prefix like \"/\" or \"/openai\" (segments of letters, digits, `-._~`; no trailing `/`)"));
    }
    Ok(text.into())
}

/// One API's catalogue: its inline `permissions` and its file, never the same name twice.
/// `table` prefixes error keys (`""` or `"api.NAME."`).
fn catalogue(
    ctx: &Ctx<'_>,
    table: &str,
    inline: Option<RawPermissions>,
    file: Option<CatalogueFile>,
) -> Result<(Vec<RouteSpec>, Vec<Arc<str>>), ConfigError> {
    let mut catalogue = Vec::new();
    let mut names: Vec<Arc<str>> = Vec::new();
    let inline = inline.map(|p| (ctx.path.to_owned(), ctx.text.to_owned(), p));
    for (file, text, perms) in inline.into_iter().chain(file) {
        for (name, routes) in perms {
            let key = format!("{table}permissions.{name}");
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
                let written = route.get_ref().text();
                let pattern = Pattern::parse(written).map_err(|e| {
                    error_in(
                        &file,
                        &text,
                        &key,
                        Some(route.span()),
                        format!("route `{written}`: {e}"),
                    )
                })?;
                let websocket = route.get_ref().websocket();
                if websocket && pattern.method.as_ref() != Some(&http::Method::GET) {
                    return Err(error_in(
                        &file,
                        &text,
                        &key,
                        Some(route.span()),
                        format!(
                            "route `{written}`: a WebSocket handshake is a GET; write `GET /path`"
                        ),
                    ));
                }
                catalogue.push(RouteSpec {
                    permission: permission.clone(),
                    text: written.into(),
                    pattern,
                    websocket,
                });
            }
            names.push(permission);
        }
    }
    Ok((catalogue, names))
}

/// `verify = "GET /path"`: a bodiless GET or HEAD that is a route of the API's own catalogue
/// (so the probe can never reach a path the allow-list does not know).
fn verify(
    ctx: &Ctx<'_>,
    key: &str,
    raw: Option<&Spanned<String>>,
    catalogue: &[RouteSpec],
) -> Result<Option<super::Verify>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let span = Some(raw.span());
    let mut parts = raw.get_ref().split_ascii_whitespace();
    let (Some(method), Some(target), None) = (parts.next(), parts.next(), parts.next()) else {
        return ctx.err(key, span, "write `verify = \"GET /path\"`");
    };
    let method = match method {
        "GET" => http::Method::GET,
        "HEAD" => http::Method::HEAD,
        _ => {
            return ctx.err(
                key,
                span,
                "the verify request must be a GET or HEAD (no body, no side effect)",
            );
        }
    };
    let Ok(uri) = target.parse::<http::Uri>() else {
        return ctx.err(key, span, format!("`{target}` is not a request target"));
    };
    let Some(pq) = uri
        .path_and_query()
        .filter(|_| uri.authority().is_none() && target.starts_with('/'))
    else {
        return ctx.err(
            key,
            span,
            "the verify target must be a path (`/v1/...`), not a URL",
        );
    };
    let policy = crate::policy::Policy::new(catalogue.to_vec(), |_| true);
    if !policy.evaluate(&method, &uri).is_allowed() {
        return ctx.err(
            key,
            span,
            format!("`{method} {target}` is not a route of this API's catalogue"),
        );
    }
    Ok(Some(super::Verify {
        method,
        target: pq.clone(),
    }))
}

/// `hosts = ["*.s3.eu-west-1.amazonaws.com"]`: one leading wildcard label on a name of at
/// least two labels; anything else is refused.
fn wildcards(
    ctx: &Ctx<'_>,
    table: &str,
    hosts: Option<&Spanned<Vec<String>>>,
) -> Result<Vec<String>, ConfigError> {
    let Some(hosts) = hosts else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for h in hosts.get_ref() {
        let suffix = h
            .strip_prefix("*.")
            .and_then(super::normalise_host)
            .filter(|s| s.contains('.') && !s.contains('*'));
        match suffix {
            Some(s) => out.push(s),
            None => {
                return ctx.err(
                    &format!("{table}.hosts"),
                    Some(hosts.span()),
                    format!("`{h}`: give one leading wildcard label on a DNS name, like \"*.s3.eu-west-1.amazonaws.com\""),
                );
            }
        }
    }
    Ok(out)
}
