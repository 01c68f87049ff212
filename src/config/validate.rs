//! `RawConfig` -> `Config`: defaults, types and cross-field rules. Each rule says which key
//! it is about and points at that key's line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::ctx::{Ctx, address, duration, error_in};
use super::raw::{RawConfig, RawPermissions};
use super::sections::limits;
use super::{
    Admin, Config, ConfigError, Expect, Identity, Listener, Mode, NamedCredential, PolicyTest,
    Principal, Reload, Runtime, Service, line_of,
};

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
    mut raw: RawConfig,
    file_catalogue: Option<(PathBuf, String, RawPermissions)>,
    api_files: std::collections::BTreeMap<String, super::apis::CatalogueFile>,
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
        // Above every common client pool's idle limit (see README, "Connections"), so a
        // client never reuses a connection sidekey is closing: Envoy's default.
        idle_timeout: duration(
            ctx,
            "listener.idle_timeout",
            raw.listener.idle_timeout.as_ref(),
            "1h",
        )?,
        tls: raw
            .listener
            .tls
            .as_ref()
            .map(|t| super::gateway::listener_tls(ctx, t.get_ref())),
        allowed_hosts: raw
            .listener
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        allowed_origins: raw
            .listener
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect(),
    };
    if !listener.address.ip().is_loopback() && listener.tls.is_none() {
        let span = raw.listener.address.as_ref().map(Spanned::span);
        return ctx.err("listener.address", span, "a plain-HTTP listener must be bound to a loopback address (127.0.0.1 or ::1); beyond loopback, configure [listener.tls]");
    }
    let admin_address = address(
        ctx,
        "admin.address",
        raw.admin.address.as_ref(),
        "127.0.0.1:9901",
    )?;
    let admin = Admin {
        address: admin_address,
        status_page: raw
            .admin
            .status_page
            .unwrap_or(admin_address.ip().is_loopback()),
    };
    super::apis::check_shape(ctx, &raw)?;
    let named_apis = !raw.api.is_empty();
    let drafted = if named_apis {
        super::apis::named(ctx, std::mem::take(&mut raw.api), api_files)?
    } else {
        super::apis::single(
            ctx,
            raw.upstream.take(),
            raw.credential.as_ref(),
            raw.permissions.take(),
            file_catalogue,
        )?
    };
    let super::apis::Drafted { apis, names, keys } = drafted;
    let names: Vec<(Arc<str>, Vec<Arc<str>>)> =
        apis.iter().map(|a| a.name.clone()).zip(names).collect();
    // Each API's own key is a slot named after the API (`default` in the single shape).
    let mut credentials: Vec<NamedCredential> = Vec::new();
    let mut api_keys: Vec<Option<usize>> = Vec::with_capacity(apis.len());
    for (i, (api, key)) in apis.iter().zip(&keys).enumerate() {
        api_keys.push(key.as_ref().map(|k| {
            credentials.push(NamedCredential {
                name: api.name.clone(),
                api: i,
                config: k.clone(),
            });
            credentials.len() - 1
        }));
    }
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
            let (allow, grants) =
                super::gateway::grants(ctx, "service.allow", &svc.allow, &names, named_apis)?;
            for (api, _) in &grants {
                if api_keys.get(*api).copied().flatten().is_none() {
                    let missing = if named_apis {
                        format!("api.{} has no `credential`", names[*api].0)
                    } else {
                        "missing table [credential] with `file` or `env`".to_owned()
                    };
                    return ctx.err(
                        if named_apis {
                            "service.allow"
                        } else {
                            "credential"
                        },
                        None,
                        missing,
                    );
                }
            }
            let mode = mode(ctx, svc.mode.as_ref())?;
            let principal = Principal {
                name: name.into(),
                identity: Identity::Local,
                allow,
                grants,
                credentials: api_keys.clone(),
                rate: None,
                max_concurrent: None,
            };
            (
                Service {
                    name: name.into(),
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
                &super::gateway::ApiKeys {
                    names: &names,
                    keys: &keys,
                    slots: &api_keys,
                    named: named_apis,
                },
                &mut credentials,
                client_ca,
            )?;
            let service = Service {
                name: "gateway".into(),
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
    let forward_proxy = super::forward::forward_proxy(ctx, raw.forward_proxy.as_ref(), &apis)?;
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
        digest: [0; 32],
        listener,
        admin,
        apis,
        named_apis,
        credentials,
        service,
        principals,
        gateway,
        runtime,
        reload,
        limits,
        tests,
        forward_proxy,
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
