//! The gateway shape of the config: `[listener.tls]` and `[[caller]]` entries, each with its
//! own identity, grants, optional key and limits. `[service]` is the one-principal special
//! case of the same model; the two are never mixed.

use std::sync::Arc;

use toml::Spanned;

use super::credential::credential;
use super::ctx::Ctx;
use super::raw::{RawCaller, RawListenerTls};
use super::{CredentialConfig, Identity, ListenerTls, NamedCredential, Principal, Rate};
use crate::credential::Scheme;

pub(crate) fn listener_tls(ctx: &Ctx<'_>, raw: &RawListenerTls) -> ListenerTls {
    ListenerTls {
        cert_file: ctx.dir.join(raw.cert_file.get_ref()),
        key_file: ctx.dir.join(raw.key_file.get_ref()),
        client_ca_file: raw
            .client_ca_file
            .as_ref()
            .map(|f| ctx.dir.join(f.get_ref())),
    }
}

/// Each API's name and catalogue permission names, as grants are resolved against them.
pub(crate) type ApiNames = [(Arc<str>, Vec<Arc<str>>)];

/// Grants as written, and resolved to (API index, permission).
pub(crate) type Grants = (Vec<Arc<str>>, Vec<(usize, Arc<str>)>);

/// Resolves `allow` against the catalogues (deduplicated): as written, and as (API index,
/// permission). With named APIs every entry is qualified, `api/permission`.
pub(crate) fn grants(
    ctx: &Ctx<'_>,
    key: &str,
    allow: &Spanned<Vec<Spanned<String>>>,
    apis: &ApiNames,
    named: bool,
) -> Result<Grants, super::ConfigError> {
    if allow.get_ref().is_empty() {
        return ctx.err(
            key,
            Some(allow.span()),
            "grant at least one permission (default is deny-all, which serves nothing)",
        );
    }
    let mut written: Vec<Arc<str>> = Vec::new();
    let mut out: Vec<(usize, Arc<str>)> = Vec::new();
    for perm in allow.get_ref() {
        let text = perm.get_ref().trim();
        let (api, name) = if named {
            let Some((a, p)) = text.split_once('/') else {
                let example = apis.first().map_or("api", |(n, _)| &**n);
                return ctx.err(
                    key,
                    Some(perm.span()),
                    format!("`{text}`: with [api.NAME] tables, qualify a permission with its API, as `{example}/{text}`"),
                );
            };
            let Some(i) = apis.iter().position(|(n, _)| **n == *a) else {
                return ctx.err(
                    key,
                    Some(perm.span()),
                    format!("`{text}`: there is no [api.{a}]"),
                );
            };
            (i, p)
        } else {
            (0, text)
        };
        let known = apis
            .get(api)
            .and_then(|(_, names)| names.iter().find(|n| ***n == *name));
        let Some(known) = known else {
            let which = if named {
                format!(
                    "api.{}'s catalogue",
                    apis.get(api).map_or("?", |(n, _)| &**n)
                )
            } else {
                "the catalogue".to_owned()
            };
            return ctx.err(
                key,
                Some(perm.span()),
                format!("permission `{name}` is not in {which}"),
            );
        };
        if !out.iter().any(|(a, p)| *a == api && p == known) {
            out.push((api, known.clone()));
            written.push(text.into());
        }
    }
    Ok((written, out))
}

/// What callers need to know about the APIs' own keys.
pub(crate) struct ApiKeys<'a> {
    pub names: &'a ApiNames,
    /// Per API: its own key's config (header and prefix a caller's key defaults to).
    pub keys: &'a [Option<CredentialConfig>],
    /// Per API: its own key's slot in `Config::credentials`.
    pub slots: &'a [Option<usize>],
    pub named: bool,
}

/// A caller's own key. Without a `scheme` of its own it takes the API's key's place (header
/// and prefix, query parameter or path template); for an API whose key has several parts
/// (`basic`, `headers`) the caller gives its whole shape.
fn own_key(
    ctx: &Ctx<'_>,
    key: &str,
    raw: &super::raw::RawCredential,
    api_key: Option<&CredentialConfig>,
) -> Result<CredentialConfig, super::ConfigError> {
    let mut own = credential(ctx, key, raw)?;
    let Some(d) = api_key.filter(|_| raw.scheme.is_none()) else {
        return Ok(own);
    };
    match (&mut own.scheme, &d.scheme) {
        (
            Scheme::Header { header, prefix },
            Scheme::Header {
                header: h,
                prefix: p,
            },
        ) => {
            if raw.header.is_none() {
                *header = h.clone();
            }
            if raw.prefix.is_none() {
                *prefix = p.clone();
            }
        }
        (Scheme::Header { .. }, Scheme::Query { .. } | Scheme::Path { .. })
            if raw.header.is_none() && raw.prefix.is_none() =>
        {
            own.scheme = d.scheme.clone();
        }
        (Scheme::Header { .. }, Scheme::Basic | Scheme::Headers { .. }) => {
            return ctx.err(
                key,
                None,
                format!(
                    "the API's key has scheme = \"{}\": give this caller's key the same `scheme` and its parts",
                    d.scheme.name()
                ),
            );
        }
        _ => {}
    }
    Ok(own)
}

/// Builds one principal per `[[caller]]`, adding a credential slot for each key a caller
/// brings of its own.
pub(crate) fn callers(
    ctx: &Ctx<'_>,
    raw: Vec<RawCaller>,
    apis: &ApiKeys<'_>,
    credentials: &mut Vec<NamedCredential>,
    client_ca: bool,
) -> Result<Vec<Principal>, super::ConfigError> {
    let mut out: Vec<Principal> = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("caller[{i}].{k}");
        let name = c.name.get_ref().trim();
        if !super::apis::is_label_name(name) {
            return ctx.err(
                &key("name"),
                Some(c.name.span()),
                "must be 1-64 characters of letters, digits, `-`, `_`, `.` or `:` (it is a metric label)",
            );
        }
        if out.iter().any(|p| &*p.name == name)
            || name == "default"
            || apis.names.iter().any(|(n, _)| **n == *name)
        {
            return ctx.err(
                &key("name"),
                Some(c.name.span()),
                format!("caller name `{name}` is used twice (or is the reserved `default`, or an API's name)"),
            );
        }
        let identity = match (&c.client_cert_san, &c.token_sha256) {
            (Some(san), None) => {
                if !client_ca {
                    return ctx.err(
                        &key("client_cert_san"),
                        Some(san.span()),
                        "client certificates need [listener.tls] with `client_ca_file`",
                    );
                }
                if san.get_ref().trim().is_empty() {
                    return ctx.err(
                        &key("client_cert_san"),
                        Some(san.span()),
                        "must not be empty",
                    );
                }
                Identity::ClientCert(san.get_ref().trim().to_owned())
            }
            (None, Some(hash)) => match parse_sha256(hash.get_ref()) {
                Some(h) => Identity::Token(h),
                None => {
                    return ctx.err(
                        &key("token_sha256"),
                        Some(hash.span()),
                        "must be 64 hex characters (print one with `sidekey token new`)",
                    );
                }
            },
            _ => {
                return ctx.err(
                    &key("name"),
                    Some(c.name.span()),
                    "identify the caller by exactly one of `client_cert_san` or `token_sha256`",
                );
            }
        };
        if let Some(dup) = out.iter().find(|p| p.identity == identity) {
            return ctx.err(
                &key("name"),
                Some(c.name.span()),
                format!("caller `{name}` has the same identity as `{}`", dup.name),
            );
        }
        let (allow, grants) = grants(ctx, &key("allow"), &c.allow, apis.names, apis.named)?;
        let mut slots = apis.slots.to_vec();
        match (&c.credential, &c.credentials, apis.named) {
            (Some(own), None, false) => {
                let config = own_key(
                    ctx,
                    &key("credential"),
                    own.get_ref(),
                    apis.keys.first().and_then(Option::as_ref),
                )?;
                credentials.push(NamedCredential {
                    name: name.into(),
                    api: 0,
                    config,
                });
                if let Some(slot) = slots.first_mut() {
                    *slot = Some(credentials.len() - 1);
                }
            }
            (None, Some(per_api), true) => {
                for (api_name, raw_key) in per_api.get_ref() {
                    let k = key(&format!("credentials.{api_name}"));
                    let Some(api) = apis.names.iter().position(|(n, _)| **n == **api_name) else {
                        return ctx.err(
                            &k,
                            Some(raw_key.span()),
                            format!("there is no [api.{api_name}]"),
                        );
                    };
                    let config = own_key(
                        ctx,
                        &k,
                        raw_key.get_ref(),
                        apis.keys.get(api).and_then(Option::as_ref),
                    )?;
                    credentials.push(NamedCredential {
                        name: format!("{name}/{api_name}").into(),
                        api,
                        config,
                    });
                    if let Some(slot) = slots.get_mut(api) {
                        *slot = Some(credentials.len() - 1);
                    }
                }
            }
            (None, None, _) => {}
            (Some(own), _, true) => {
                return ctx.err(
                    &key("credential"),
                    Some(own.span()),
                    "with [api.NAME] tables a caller's keys are per API: `credentials = { NAME = { file = \"...\" } }`",
                );
            }
            (_, Some(per_api), false) => {
                return ctx.err(
                    &key("credentials"),
                    Some(per_api.span()),
                    "`credentials` (per API) is for [api.NAME] configs; here use `credential = { file = ... }`",
                );
            }
        }
        for (api, _) in &grants {
            if slots.get(*api).copied().flatten().is_none() {
                let message = if apis.named {
                    let api_name = apis.names.get(*api).map_or("?", |(n, _)| &**n);
                    format!(
                        "no key for this caller on api.{api_name}: give it `credentials = {{ {api_name} = {{ file = ... }} }}` or give [api.{api_name}] a `credential`"
                    )
                } else {
                    "no key for this caller: give it `credential = { file = ... }` or add a [credential] table".to_owned()
                };
                return ctx.err(&key("credential"), Some(c.name.span()), message);
            }
        }
        let rate = match &c.rate {
            None => None,
            Some(r) => {
                let Some(per_second) = parse_rate(r.get_ref()) else {
                    return ctx.err(
                        &key("rate"),
                        Some(r.span()),
                        format!(
                            "`{}` is not a rate like \"50/s\", \"3000/m\" or \"100/h\"",
                            r.get_ref()
                        ),
                    );
                };
                let burst = match &c.burst {
                    None => per_second.ceil().max(1.0) as u32,
                    Some(b) => match u32::try_from(*b.get_ref()) {
                        Ok(n) if n > 0 => n,
                        _ => {
                            return ctx.err(
                                &key("burst"),
                                Some(b.span()),
                                "must be a positive number",
                            );
                        }
                    },
                };
                Some(Rate { per_second, burst })
            }
        };
        if c.rate.is_none() {
            if let Some(b) = &c.burst {
                return ctx.err(&key("burst"), Some(b.span()), "`burst` needs `rate`");
            }
        }
        let max_concurrent = match &c.max_concurrent {
            None => None,
            Some(m) => match usize::try_from(*m.get_ref()) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return ctx.err(
                        &key("max_concurrent"),
                        Some(m.span()),
                        "must be a positive number",
                    );
                }
            },
        };
        out.push(Principal {
            name: name.into(),
            identity,
            allow,
            grants,
            credentials: slots,
            rate,
            max_concurrent,
        });
    }
    Ok(out)
}

/// `N/s`, `N/m`, `N/h` -> requests per second.
fn parse_rate(text: &str) -> Option<f64> {
    let (n, unit) = text.trim().split_once('/')?;
    let n: u32 = n.trim().parse().ok()?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    (n > 0).then(|| f64::from(n) / per)
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    if t.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = t.get(i * 2..i * 2 + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_hashes_parse() {
        assert_eq!(parse_rate("50/s"), Some(50.0));
        assert_eq!(parse_rate("120/m"), Some(2.0));
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("5/d"), None);
        assert_eq!(parse_rate("fast"), None);
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_sha256(hex).map(|h| h[0]), Some(0x9f));
        assert_eq!(parse_sha256(&hex[..62]), None);
        assert_eq!(parse_sha256(&hex.replace('9', "g")), None);
    }
}
