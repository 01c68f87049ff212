//! The gateway shape of the config: `[listener.tls]` and `[[caller]]` entries, each with its
//! own identity, grants, optional key and limits. `[service]` is the one-principal special
//! case of the same model; the two are never mixed.

use std::sync::Arc;

use toml::Spanned;

use super::raw::{RawCaller, RawListenerTls};
use super::sections::credential;
use super::validate::Ctx;
use super::{CredentialConfig, Identity, ListenerTls, NamedCredential, Principal, Rate};

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

/// Resolves `allow` against the catalogue's permission names (deduplicated).
pub(crate) fn grants(
    ctx: &Ctx<'_>,
    key: &str,
    allow: &Spanned<Vec<Spanned<String>>>,
    names: &[Arc<str>],
) -> Result<Vec<Arc<str>>, super::ConfigError> {
    if allow.get_ref().is_empty() {
        return ctx.err(
            key,
            Some(allow.span()),
            "grant at least one permission (default is deny-all, which serves nothing)",
        );
    }
    let mut out: Vec<Arc<str>> = Vec::new();
    for perm in allow.get_ref() {
        let Some(known) = names.iter().find(|n| ***n == **perm.get_ref()) else {
            return ctx.err(
                key,
                Some(perm.span()),
                format!("permission `{}` is not in the catalogue", perm.get_ref()),
            );
        };
        if !out.contains(known) {
            out.push(known.clone());
        }
    }
    Ok(out)
}

/// Builds one principal per `[[caller]]`, adding a credential slot for each caller that
/// brings its own key (header and prefix default to `[credential]`'s).
pub(crate) fn callers(
    ctx: &Ctx<'_>,
    raw: Vec<RawCaller>,
    names: &[Arc<str>],
    default: Option<&CredentialConfig>,
    credentials: &mut Vec<NamedCredential>,
    client_ca: bool,
) -> Result<Vec<Principal>, super::ConfigError> {
    let mut out: Vec<Principal> = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("caller[{i}].{k}");
        let name = c.name.get_ref().trim();
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
        if name.is_empty() || name.len() > 64 || !name.bytes().all(allowed) {
            return ctx.err(
                &key("name"),
                Some(c.name.span()),
                "must be 1-64 characters of letters, digits, `-`, `_`, `.` or `:` (it is a metric label)",
            );
        }
        if out.iter().any(|p| &*p.name == name) || name == "default" {
            return ctx.err(
                &key("name"),
                Some(c.name.span()),
                format!("caller name `{name}` is used twice (or is the reserved `default`)"),
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
        let allow = grants(ctx, &key("allow"), &c.allow, names)?;
        let credential = match (&c.credential, default) {
            (Some(own), _) => {
                let mut own_config = credential(ctx, &key("credential"), own.get_ref())?;
                if let Some(d) = default {
                    if own.get_ref().header.is_none() {
                        own_config.header = d.header.clone();
                    }
                    if own.get_ref().prefix.is_none() {
                        own_config.prefix = d.prefix.clone();
                    }
                }
                credentials.push(NamedCredential {
                    name: name.into(),
                    config: own_config,
                });
                credentials.len() - 1
            }
            (None, Some(_)) => 0,
            (None, None) => {
                return ctx.err(
                    &key("credential"),
                    Some(c.name.span()),
                    "no key for this caller: give it `credential = { file = ... }` or add a [credential] table",
                );
            }
        };
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
            credential,
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
