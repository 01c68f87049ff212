//! `sidekey check`: validates the config, prints each principal's effective grants, runs the
//! lints and the `[[test]]` expectations with the same `evaluate` as `run`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::{CheckOptions, EXIT_BAD_CONFIG, decision_of};
use crate::config::{Config, Expect, Identity, PolicyTest, Principal};
use crate::credential::{Credential, KeyError};
use crate::policy::Policy;
use crate::policy::lint::Lint;

/// Validates the config, prints the effective table, runs lints and `[[test]]`
/// expectations. 0 ok, 1 failing tests (or lints with `--strict`), 64 bad config.
pub fn check(path: &Path, opts: CheckOptions, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let config = match Config::load(path).map_err(|e| e.to_string()).and_then(|c| {
        gateway_keys_present(&c)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            if opts.json {
                let _ = writeln!(out, "{}", serde_json::json!({"ok": false, "error": e}));
            } else {
                let _ = writeln!(err, "error: {e}");
            }
            return EXIT_BAD_CONFIG;
        }
    };
    let policies: Vec<Vec<Arc<Policy>>> = config
        .principals
        .iter()
        .map(|p| config.compile_policies(p))
        .collect();
    let router = config.router();
    // Catalogue lints are the same for every caller: report each once.
    let mut lints: Vec<(&Principal, Lint)> = Vec::new();
    for (p, per_api) in config.principals.iter().zip(&policies) {
        for (i, (api, policy)) in config.apis.iter().zip(per_api).enumerate() {
            let granted: Vec<Arc<str>> = p
                .grants
                .iter()
                .filter(|(a, _)| *a == i)
                .map(|(_, g)| g.clone())
                .collect();
            for mut l in crate::policy::lint::lint(policy, &api.catalogue, &granted) {
                if config.named_apis {
                    l.message = format!("api.{}: {}", api.name, l.message);
                }
                let per_caller = l.kind == "granted_never_matches";
                if per_caller || !lints.iter().any(|(_, o)| o.message == l.message) {
                    lints.push((p, l));
                }
            }
        }
    }
    if let Some(spec_path) = opts.openapi {
        match drift_lints(&config, spec_path, opts.api) {
            Ok(found) => {
                if let Some(p) = config.principals.first() {
                    lints.extend(found.into_iter().map(|l| (p, l)));
                }
            }
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return EXIT_BAD_CONFIG;
            }
        }
    }
    let results: Vec<(&PolicyTest, Expect)> = config
        .tests
        .iter()
        .filter_map(|t| {
            let per_api = policies.get(t.principal)?;
            Some((t, decision_of(&router, per_api, &t.method, &t.target)))
        })
        .collect();
    let failed = results.iter().filter(|(t, got)| t.expect != *got).count();
    let key_notes: Vec<(&str, KeyError)> = config
        .credentials
        .iter()
        .filter_map(|c| {
            // A token scheme's secret inputs are read as its task reads them.
            let e = match c.config.scheme.mint() {
                Some(_) => c.config.read_parts().err()?,
                None => Credential::load(&c.config).err()?,
            };
            Some((&*c.name, e))
        })
        .collect();
    let lints_fail = opts.strict && !lints.is_empty();
    let ok = failed == 0 && !lints_fail;
    let lint_text = |p: &Principal, l: &Lint| {
        if config.gateway && l.kind == "granted_never_matches" {
            format!("caller `{}`: {}", p.name, l.message)
        } else {
            l.message.clone()
        }
    };
    if opts.json {
        let body = serde_json::json!({
            "ok": ok,
            "config": config.path.display().to_string(),
            "service": &*config.service.name,
            "mode": config.service.mode.as_str(),
            "gateway": config.gateway,
            "apis": config.apis.iter().map(|a| serde_json::json!({
                "name": &*a.name,
                "url": a.upstream.url,
                "path_prefix": a.prefix.as_deref(),
                "listen": a.listen.map(|l| l.to_string()),
            })).collect::<Vec<_>>(),
            "grants": config.principals.first().map(|p| grants(&config, p)),
            "callers": config.principals.iter().map(|p| serde_json::json!({
                "name": &*p.name,
                "identity": identity(&p.identity),
                "credential": p.credentials.first().copied().flatten().and_then(|s| config.credentials.get(s)).map(|c| &*c.name),
                "credentials": config.apis.iter().zip(&p.credentials).map(|(a, s)| (a.name.to_string(), serde_json::json!(s.and_then(|s| config.credentials.get(s)).map(|c| &*c.name)))).collect::<serde_json::Map<_, _>>(),
                "grants": grants(&config, p),
            })).collect::<Vec<_>>(),
            "lints": lints.iter().map(|(p, l)| serde_json::json!({"kind": l.kind, "caller": &*p.name, "message": lint_text(p, l)})).collect::<Vec<_>>(),
            "tests": results.iter().map(|(t, got)| serde_json::json!({
                "request": t.request, "line": t.line, "expect": t.expect.as_str(), "got": got.as_str(), "pass": t.expect == *got,
            })).collect::<Vec<_>>(),
            "credential_note": key_notes.first().map(|(_, e)| e.to_string()),
        });
        let _ = writeln!(out, "{body}");
    } else {
        let _ = print_table(&config, out);
        for (p, l) in &lints {
            let level = if opts.strict { "error" } else { "warning" };
            let _ = writeln!(out, "{level}: {}: {}", l.kind, lint_text(p, l));
        }
        for (t, got) in &results {
            if t.expect != *got {
                let _ = writeln!(
                    out,
                    "FAIL {}:{}: `{}` expected {}, got {}",
                    config.path.display(),
                    t.line,
                    t.request,
                    t.expect.as_str(),
                    got.as_str()
                );
            }
        }
        if !results.is_empty() {
            let _ = writeln!(
                out,
                "tests: {} passed, {failed} failed",
                results.len() - failed
            );
        }
        // The key is a runtime input (it may be mounted later), so its absence is a note here.
        for (name, note) in &key_notes {
            let _ = writeln!(
                out,
                "note: no valid API key for `{name}` right now ({note}); `run` would start not ready"
            );
        }
    }
    i32::from(!ok)
}

/// A gateway caller's own key file must exist (a typo would leave that caller failing
/// closed forever). The service's key may be mounted later, so it is only a note.
fn gateway_keys_present(config: &Config) -> Result<(), String> {
    if !config.gateway {
        return Ok(());
    }
    for c in &config.credentials {
        for f in c.config.files() {
            if !f.exists() {
                return Err(format!(
                    "{}: credential `{}`: the key file {} does not exist",
                    config.path.display(),
                    c.name,
                    f.display()
                ));
            }
        }
    }
    Ok(())
}

fn identity(id: &Identity) -> String {
    match id {
        Identity::Local => "local".into(),
        Identity::ClientCert(san) => format!("client_cert_san {san}"),
        Identity::Token(_) => "token".into(),
    }
}

fn grants(config: &Config, p: &Principal) -> serde_json::Map<String, serde_json::Value> {
    p.grants
        .iter()
        .map(|(api, perm)| {
            let routes: Vec<&str> = config
                .apis
                .get(*api)
                .map(|a| a.catalogue.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|r| r.permission == *perm)
                .map(|r| &*r.text)
                .collect();
            (config.qualified(*api, perm), serde_json::json!(routes))
        })
        .collect()
}

fn source(config: &Config, slot: usize) -> String {
    match config.credentials.get(slot).map(|c| (&c.name, &c.config)) {
        Some((name, c)) => {
            let from: Vec<String> = c
                .parts
                .iter()
                .map(|p| format!("{} {}", p.name, p.source.describe()))
                .collect();
            format!("`{name}` ({}) -> {}", from.join(", "), c.scheme.placement())
        }
        None => "none".into(),
    }
}

fn print_table(config: &Config, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "config ok: {}", config.path.display())?;
    let tls = if config.listener.tls.is_some() {
        " (tls)"
    } else {
        ""
    };
    writeln!(
        out,
        "listener {}{tls}  admin {}",
        config.listener.address, config.admin.address
    )?;
    for api in &config.apis {
        if config.named_apis {
            let at = match (&api.prefix, api.listen) {
                (Some(p), Some(l)) => format!("{p} and listener {l}"),
                (Some(p), None) => p.to_string(),
                (None, Some(l)) => format!("listener {l}"),
                (None, None) => "unreachable".into(),
            };
            writeln!(out, "api {} at {at} -> {}", api.name, api.upstream.url)?;
        } else {
            writeln!(out, "upstream {}", api.upstream.url)?;
        }
    }
    if let Some(fp) = &config.forward_proxy {
        print_forward(config, fp, out)?;
    }
    if let Some(sh) = &config.limits.shared {
        writeln!(
            out,
            "rate limits shared in Redis at {}{} (key prefix {:?}, timeout {}, on error {}; max_concurrent stays per replica)",
            sh.server,
            if sh.tls { " over TLS" } else { "" },
            sh.key_prefix,
            humantime::format_duration(sh.timeout),
            sh.on_error.as_str()
        )?;
        if !config.principals.iter().any(|p| p.rate.is_some()) {
            writeln!(
                out,
                "  warning: no caller has a rate, so [limits.shared] is never consulted"
            )?;
        }
    }
    for p in &config.principals {
        if config.gateway {
            writeln!(out, "caller {} ({})", p.name, identity(&p.identity))?;
        } else {
            writeln!(
                out,
                "service {} (mode {})",
                config.service.name,
                config.service.mode.as_str()
            )?;
        }
        if let Some(r) = p.rate {
            writeln!(out, "  rate {}/s, burst {}", r.per_second, r.burst)?;
        }
        if let Some(m) = p.max_concurrent {
            writeln!(out, "  max_concurrent {m}")?;
        }
        let indent = if config.named_apis { "  " } else { "" };
        for (i, api) in config.apis.iter().enumerate() {
            let granted: Vec<&Arc<str>> = p
                .grants
                .iter()
                .filter(|(a, _)| *a == i)
                .map(|(_, g)| g)
                .collect();
            let slot = p.credentials.get(i).copied().flatten();
            if config.named_apis {
                if granted.is_empty() {
                    writeln!(out, "  api {}: nothing granted", api.name)?;
                    continue;
                }
                writeln!(out, "  api {}", api.name)?;
            }
            writeln!(
                out,
                "{indent}  credential {}",
                slot.map_or("none".into(), |s| source(config, s))
            )?;
            for perm in &granted {
                writeln!(out, "{indent}  {}", config.qualified(i, perm))?;
                for route in api.catalogue.iter().filter(|r| r.permission == **perm) {
                    let ws = if route.websocket { "  (websocket)" } else { "" };
                    writeln!(out, "{indent}    {}{ws}", route.text)?;
                }
            }
            let mut denied: Vec<&str> = api
                .catalogue
                .iter()
                .map(|r| &*r.permission)
                .filter(|perm| !granted.iter().any(|g| &***g == *perm))
                .collect();
            denied.dedup();
            if !denied.is_empty() {
                writeln!(
                    out,
                    "{indent}  not granted (403 permission_denied): {}",
                    denied.join(", ")
                )?;
            }
        }
    }
    if config.gateway {
        writeln!(out, "unidentified callers: 401 caller_unauthenticated")?;
    }
    writeln!(out, "everything else: 403 route_not_allowed")
}

/// The forward proxy: what it intercepts, what it tunnels, and whether the CA covers every
/// intercepted host.
fn print_forward(
    config: &Config,
    fp: &crate::config::ForwardProxy,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(out, "forward proxy {}", fp.address)?;
    for api in &config.apis {
        if let Some((host, port)) = crate::config::api_key(api) {
            writeln!(out, "  intercepts {host}:{port} (api {})", api.name)?;
        }
    }
    match fp.unknown_hosts {
        crate::config::UnknownHosts::Deny => {
            writeln!(out, "  any other host: 403 host_not_allowed")?;
        }
        crate::config::UnknownHosts::Tunnel => {
            let list: Vec<String> = fp.tunnel.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            writeln!(
                out,
                "  tunnels blind (no key, no policy): {}",
                list.join(", ")
            )?;
            writeln!(out, "  any other host: 403 host_not_allowed")?;
        }
    }
    let Some(files) = &fp.ca else {
        return writeln!(
            out,
            "  CA: none configured (only `sidekey exec` can run this)"
        );
    };
    match crate::control::ca::InterceptCa::load(files) {
        Err(e) => writeln!(out, "  CA: {e}"),
        Ok(ca) => {
            writeln!(
                out,
                "  CA {} (fingerprint {}), not after {}",
                files.cert.display(),
                ca.fingerprint,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(ca.not_after)
                )
            )?;
            if let Some(permitted) = ca.permitted() {
                for api in &config.apis {
                    if let Some((host, _)) = crate::config::api_key(api) {
                        if !crate::control::ca::permits(&permitted, &host) {
                            writeln!(
                                out,
                                "  warning: {host} is outside the CA's name constraints ({}): clients will reject its leaf; make a new CA with `sidekey ca init --config {}`",
                                permitted.join(", "),
                                config.path.display()
                            )?;
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

/// `--openapi SPEC`: the catalogue of the API it describes against the spec's operations.
fn drift_lints(config: &Config, spec: &Path, api: Option<&str>) -> Result<Vec<Lint>, String> {
    let chosen = match api {
        Some(name) => config
            .apis
            .iter()
            .find(|a| &*a.name == name)
            .ok_or_else(|| format!("--api {name}: no such API in the config"))?,
        None if config.apis.len() == 1 => config.apis.first().ok_or("the config has no API")?,
        None => return Err("several APIs: name the one SPEC describes with --api NAME".into()),
    };
    let (parsed, _) =
        super::catalogue::read(spec).map_err(|e| format!("{}: {e}", spec.display()))?;
    let (routes, _) = super::catalogue::routes(&parsed, Some(super::catalogue::By::Tags), "");
    let name = spec.file_name().map_or_else(
        || spec.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut lints = super::catalogue::drift::drift(&chosen.catalogue, &routes, &name);
    if config.named_apis {
        for l in &mut lints {
            l.message = format!("api.{}: {}", chosen.name, l.message);
        }
    }
    Ok(lints)
}

/// `check --online`: mints one token for every credential with a token scheme and reports the
/// result (fingerprint and lifetime, or the token endpoint's error), never the token. 0 when
/// every token was minted, 1 otherwise, 64 for a bad config.
pub fn online(path: &std::path::Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let config = match super::load(path, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        let _ = writeln!(err, "error: cannot start a runtime");
        return 1;
    };
    let mut failed = false;
    let minted: Vec<_> = config
        .credentials
        .iter()
        .filter(|c| c.config.scheme.mint().is_some())
        .collect();
    if minted.is_empty() {
        let _ = writeln!(out, "online: no credential with a token scheme");
    }
    for c in minted {
        match rt.block_on(crate::control::token::mint_once(&c.config)) {
            Ok((fp, lifetime)) => {
                let _ = writeln!(
                    out,
                    "online: `{}`: token minted (fingerprint {fp}, valid {} s)",
                    c.name,
                    lifetime.as_secs()
                );
            }
            Err(e) => {
                failed = true;
                let _ = writeln!(out, "online: `{}`: no token: {e}", c.name);
            }
        }
    }
    i32::from(failed)
}
