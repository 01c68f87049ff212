//! The `credential` table (`[credential]`, `api.NAME.credential`, a caller's own): its
//! `scheme` and the parts that scheme takes, each from `file`/`env` (or a plain value where
//! the part is not secret). A part given twice, a missing part and a key another scheme
//! takes are refused, naming the key and line.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::ctx::Ctx;
use super::raw::{OneOrMany, RawCredential};
use super::{ConfigError, CredentialConfig, CredentialSource};
use crate::credential::{Part, Scheme};
use crate::policy::template::PathTemplate;

type Span = Option<std::ops::Range<usize>>;

/// Builds a credential config from its table (`key` names it in errors).
pub(crate) fn credential(
    ctx: &Ctx<'_>,
    key: &str,
    cred: &RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let scheme = cred
        .scheme
        .as_ref()
        .map_or("header", |s| s.get_ref().as_str());
    let scheme_span = cred.scheme.as_ref().map(Spanned::span);
    let allowed: &[&str] = match scheme {
        "header" => &["file", "env", "header", "prefix"],
        "basic" => &[
            "username",
            "username_file",
            "username_env",
            "password_file",
            "password_env",
        ],
        "query" => &["file", "env", "param"],
        "path" => &["file", "env", "template"],
        "headers" => &["headers"],
        "oauth2_client_credentials" => &[
            "client_id",
            "client_id_file",
            "client_id_env",
            "client_secret_file",
            "client_secret_env",
            "token_url",
            "client_auth",
            "scope",
            "params",
            "refresh_before",
            "token_ca_file",
            "token_connect_to",
        ],
        "google_service_account" => &[
            "key_file",
            "scope",
            "refresh_before",
            "token_ca_file",
            "token_connect_to",
        ],
        "github_app" => &[
            "app_id",
            "installation_id",
            "private_key_file",
            "private_key_env",
            "refresh_before",
            "token_ca_file",
            "token_connect_to",
        ],
        "aws_sigv4" => super::sigv4::KEYS,
        other => {
            return ctx.err(
                &format!("{key}.scheme"),
                scheme_span,
                format!("unknown scheme `{other}`: use header, basic, query, path, headers, oauth2_client_credentials, google_service_account, github_app or aws_sigv4"),
            );
        }
    };
    for (name, span) in present(cred) {
        if !allowed.contains(&name) {
            return ctx.err(
                &format!("{key}.{name}"),
                span,
                format!(
                    "`{name}` is not a part of scheme = \"{scheme}\" (it takes {})",
                    allowed.join(", ")
                ),
            );
        }
    }
    let part = |name: &str, source| Part {
        name: Arc::from(name),
        source,
    };
    let (scheme, parts) = match scheme {
        "header" => {
            let source = one_source(ctx, key, "", &cred.file, &cred.env)?;
            let (header, prefix) = header_and_prefix(ctx, key, cred)?;
            (Scheme::Header { header, prefix }, vec![part("key", source)])
        }
        "basic" => {
            let user = match (&cred.username, &cred.username_file, &cred.username_env) {
                (Some(u), None, None) if u.get_ref().contains(':') => {
                    return ctx.err(
                        &format!("{key}.username"),
                        Some(u.span()),
                        "a Basic user name cannot hold `:`",
                    );
                }
                (Some(u), None, None)
                    if crate::credential::validate_key(u.get_ref().as_bytes()).is_err() =>
                {
                    return ctx.err(
                        &format!("{key}.username"),
                        Some(u.span()),
                        "must be non-empty visible ASCII",
                    );
                }
                (Some(u), None, None) => CredentialSource::Value(u.get_ref().clone()),
                (None, f, e) if f.is_some() || e.is_some() => {
                    one_source(ctx, key, "username_", f, e)?
                }
                _ => {
                    return ctx.err(
                        key,
                        None,
                        "set exactly one of `username`, `username_file` or `username_env`",
                    );
                }
            };
            let password = one_source(
                ctx,
                key,
                "password_",
                &cred.password_file,
                &cred.password_env,
            )?;
            (
                Scheme::Basic,
                vec![part("username", user), part("password", password)],
            )
        }
        "query" => {
            let source = one_source(ctx, key, "", &cred.file, &cred.env)?;
            let param = match &cred.param {
                Some(p) if !p.get_ref().is_empty() => p.get_ref().clone(),
                p => {
                    return ctx.err(
                        &format!("{key}.param"),
                        p.as_ref().map(Spanned::span),
                        "name the query parameter (non-empty)",
                    );
                }
            };
            (Scheme::Query { param }, vec![part("key", source)])
        }
        "path" => {
            let source = one_source(ctx, key, "", &cred.file, &cred.env)?;
            let Some(raw) = &cred.template else {
                return ctx.err(
                    &format!("{key}.template"),
                    None,
                    "set `template`, e.g. \"/bot{key}\"",
                );
            };
            let texts: Vec<&str> = match raw.get_ref() {
                OneOrMany::One(t) => vec![t.as_str()],
                OneOrMany::Many(list) => list.iter().map(String::as_str).collect(),
            };
            if texts.is_empty() {
                return ctx.err(
                    &format!("{key}.template"),
                    Some(raw.span()),
                    "give at least one template",
                );
            }
            let mut templates = Vec::with_capacity(texts.len());
            for text in texts {
                match PathTemplate::parse(text) {
                    Ok(t) => templates.push(t),
                    Err(e) => {
                        return ctx.err(
                            &format!("{key}.template"),
                            Some(raw.span()),
                            format!("`{text}` {e}"),
                        );
                    }
                }
            }
            (
                Scheme::Path {
                    templates: templates.into(),
                },
                vec![part("key", source)],
            )
        }
        "oauth2_client_credentials" | "google_service_account" | "github_app" => {
            return super::mint::minted(ctx, key, scheme, cred);
        }
        "aws_sigv4" => return super::sigv4::aws(ctx, key, cred),
        _ => {
            let Some(map) = cred.headers.as_ref().filter(|m| !m.get_ref().is_empty()) else {
                return ctx.err(
                    &format!("{key}.headers"),
                    None,
                    "list the headers: headers = { \"dd-api-key\" = { file = \"...\" } }",
                );
            };
            let mut names = Vec::new();
            let mut parts = Vec::new();
            for (text, source) in map.get_ref() {
                let at = format!("{key}.headers.{text}");
                let name = checked_name(ctx, &at, Some(source.span()), text)?;
                let src = one_source(ctx, &at, "", &source.get_ref().file, &source.get_ref().env)?;
                parts.push(part(name.as_str(), src));
                names.push(name);
            }
            (Scheme::Headers { names }, parts)
        }
    };
    Ok(CredentialConfig { scheme, parts })
}

/// The keys given in a credential table, with their spans.
fn present(c: &RawCredential) -> Vec<(&'static str, Span)> {
    let s = |name, v: &Option<Spanned<String>>| v.as_ref().map(|v| (name, Some(v.span())));
    [
        s("file", &c.file),
        s("env", &c.env),
        s("header", &c.header),
        s("prefix", &c.prefix),
        s("username", &c.username),
        s("username_file", &c.username_file),
        s("username_env", &c.username_env),
        s("password_file", &c.password_file),
        s("password_env", &c.password_env),
        s("param", &c.param),
        c.template.as_ref().map(|t| ("template", Some(t.span()))),
        c.headers.as_ref().map(|h| ("headers", Some(h.span()))),
        s("client_id", &c.client_id),
        s("client_id_file", &c.client_id_file),
        s("client_id_env", &c.client_id_env),
        s("client_secret_file", &c.client_secret_file),
        s("client_secret_env", &c.client_secret_env),
        s("token_url", &c.token_url),
        s("client_auth", &c.client_auth),
        s("scope", &c.scope),
        c.params.as_ref().map(|p| ("params", Some(p.span()))),
        s("key_file", &c.key_file),
        s("app_id", &c.app_id),
        s("installation_id", &c.installation_id),
        s("private_key_file", &c.private_key_file),
        s("private_key_env", &c.private_key_env),
        s("refresh_before", &c.refresh_before),
        s("token_ca_file", &c.token_ca_file),
        s("token_connect_to", &c.token_connect_to),
        s("region", &c.region),
        s("service", &c.service),
        s("access_key_id_file", &c.access_key_id_file),
        s("access_key_id_env", &c.access_key_id_env),
        s("secret_access_key_file", &c.secret_access_key_file),
        s("secret_access_key_env", &c.secret_access_key_env),
        s("session_token_file", &c.session_token_file),
        s("session_token_env", &c.session_token_env),
        s("payload", &c.payload),
        s("max_signed_body", &c.max_signed_body),
        s("role_arn", &c.role_arn),
        s("role_session_name", &c.role_session_name),
        s("web_identity_token_file", &c.web_identity_token_file),
        s("sts_url", &c.sts_url),
        s("sts_ca_file", &c.sts_ca_file),
        s("sts_connect_to", &c.sts_connect_to),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Exactly one of `{stem}file` / `{stem}env`.
pub(super) fn one_source(
    ctx: &Ctx<'_>,
    key: &str,
    stem: &str,
    file: &Option<Spanned<String>>,
    env: &Option<Spanned<String>>,
) -> Result<CredentialSource, ConfigError> {
    match (file, env) {
        (Some(f), None) => Ok(CredentialSource::File(ctx.dir.join(f.get_ref()))),
        (None, Some(e)) if !e.get_ref().is_empty() => {
            Ok(CredentialSource::Env(e.get_ref().clone()))
        }
        (None, Some(e)) => ctx.err(
            &format!("{key}.{stem}env"),
            Some(e.span()),
            "must name an environment variable",
        ),
        (Some(_), Some(e)) => ctx.err(
            key,
            Some(e.span()),
            format!("set exactly one of `{stem}file` or `{stem}env`"),
        ),
        (None, None) => ctx.err(
            key,
            None,
            format!("set exactly one of `{stem}file` or `{stem}env`"),
        ),
    }
}

/// A header a credential may be sent in: a valid name, never hop-by-hop or routing.
fn checked_name(
    ctx: &Ctx<'_>,
    key: &str,
    span: Span,
    text: &str,
) -> Result<HeaderName, ConfigError> {
    let Ok(header) = HeaderName::from_bytes(text.as_bytes()) else {
        return ctx.err(key, span, format!("`{text}` is not a header name"));
    };
    if crate::headers::is_reserved(&header) {
        return ctx.err(
            key,
            span,
            format!("`{text}` is a hop-by-hop or reserved header"),
        );
    }
    Ok(header)
}

fn header_and_prefix(
    ctx: &Ctx<'_>,
    key: &str,
    cred: &RawCredential,
) -> Result<(HeaderName, String), ConfigError> {
    let text = cred
        .header
        .as_ref()
        .map_or("authorization", |h| h.get_ref().as_str());
    let header = checked_name(
        ctx,
        &format!("{key}.header"),
        cred.header.as_ref().map(Spanned::span),
        text,
    )?;
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
    Ok((header, prefix))
}
