//! `sidekey check` and `sidekey explain`: the config and the policy as `run` sees them.
//! Both write to a caller-supplied writer and return the process exit code.

use std::io::Write;
use std::path::Path;

use http::{Method, Uri};

use crate::config::{Config, CredentialSource, Expect, Mode, PolicyTest};
use crate::policy::{Policy, Verdict};
use crate::proxy::ProxyError;
use crate::secret::Credential;

/// Exit code for a bad config (BSD `EX_USAGE`, as linkerd uses).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// How `check` reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions {
    /// Lints become errors (exit 1).
    pub strict: bool,
    /// Machine-readable output.
    pub json: bool,
}

/// The decision class of a verdict, as `[[test]] expect` names it.
pub fn decision_of(policy: &Policy, method: &str, target: &str) -> Expect {
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), target.parse::<Uri>())
    else {
        return Expect::Reject;
    };
    match policy.evaluate(&method, &uri) {
        Verdict::Allow { .. } => Expect::Allow,
        Verdict::PermissionDenied { .. } | Verdict::NoRoute { .. } => Expect::Deny,
        Verdict::MethodNotAllowed | Verdict::Rejected(_) => Expect::Reject,
    }
}

/// Validates the config, prints the effective table, runs lints and `[[test]]`
/// expectations. 0 ok, 1 failing tests (or lints with `--strict`), 64 bad config.
pub fn check(path: &Path, opts: CheckOptions, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            if opts.json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"ok": false, "error": e.to_string()})
                );
            } else {
                let _ = writeln!(err, "error: {e}");
            }
            return EXIT_BAD_CONFIG;
        }
    };
    let policy = config.compile_policy();
    let lints = crate::policy::lint::lint(&policy, &config.catalogue, &config.service.allow);
    let results: Vec<(&PolicyTest, Expect)> = config
        .tests
        .iter()
        .map(|t| (t, decision_of(&policy, &t.method, &t.target)))
        .collect();
    let failed = results.iter().filter(|(t, got)| t.expect != *got).count();
    let key_note = Credential::load(&config.credential)
        .err()
        .map(|e| e.to_string());
    let lints_fail = opts.strict && !lints.is_empty();
    let ok = failed == 0 && !lints_fail;
    if opts.json {
        let grants: serde_json::Map<String, serde_json::Value> = config
            .service
            .allow
            .iter()
            .map(|p| {
                let routes: Vec<&str> = config
                    .catalogue
                    .iter()
                    .filter(|r| r.permission == *p)
                    .map(|r| &*r.text)
                    .collect();
                (p.to_string(), serde_json::json!(routes))
            })
            .collect();
        let body = serde_json::json!({
            "ok": ok,
            "config": config.path.display().to_string(),
            "service": &*config.service.name,
            "mode": config.service.mode.as_str(),
            "grants": grants,
            "lints": lints.iter().map(|l| serde_json::json!({"kind": l.kind, "message": l.message})).collect::<Vec<_>>(),
            "tests": results.iter().map(|(t, got)| serde_json::json!({
                "request": t.request, "line": t.line, "expect": t.expect.as_str(), "got": got.as_str(), "pass": t.expect == *got,
            })).collect::<Vec<_>>(),
            "credential_note": key_note,
        });
        let _ = writeln!(out, "{body}");
    } else {
        let _ = print_table(&config, out);
        for l in &lints {
            let level = if opts.strict { "error" } else { "warning" };
            let _ = writeln!(out, "{level}: {}: {}", l.kind, l.message);
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
        if let Some(note) = key_note {
            let _ = writeln!(
                out,
                "note: no valid API key right now ({note}); `run` would start not ready"
            );
        }
    }
    i32::from(!ok)
}

fn print_table(config: &Config, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "config ok: {}", config.path.display())?;
    let credential = match &config.credential.source {
        CredentialSource::File(p) => format!("file {}", p.display()),
        CredentialSource::Env(v) => format!("env ${v}"),
    };
    writeln!(
        out,
        "listener {}  admin {}",
        config.listener.address, config.admin.address
    )?;
    writeln!(
        out,
        "upstream {}  credential {credential} -> header `{}`",
        config.upstream.url, config.credential.header
    )?;
    writeln!(
        out,
        "service {} (mode {})",
        config.service.name,
        config.service.mode.as_str()
    )?;
    for perm in &config.service.allow {
        writeln!(out, "  {perm}")?;
        for route in config.catalogue.iter().filter(|r| r.permission == *perm) {
            writeln!(out, "    {}", route.text)?;
        }
    }
    let mut denied: Vec<&str> = config
        .catalogue
        .iter()
        .map(|r| &*r.permission)
        .filter(|p| !config.service.allow.iter().any(|a| &**a == *p))
        .collect();
    denied.dedup();
    if !denied.is_empty() {
        writeln!(
            out,
            "not granted (403 permission_denied): {}",
            denied.join(", ")
        )?;
    }
    writeln!(out, "everything else: 403 route_not_allowed")
}

/// Loads a config for a command, printing the error; `Err` carries the exit code (64).
pub fn load(path: &Path, err: &mut dyn Write) -> Result<Config, i32> {
    Config::load(path).map_err(|e| {
        let _ = writeln!(err, "error: {e}");
        EXIT_BAD_CONFIG
    })
}

/// Prints the decision `run` would make. 0 allowed, 1 denied or rejected, 64 bad config.
pub fn explain(
    path: &Path,
    method: &str,
    target: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let config = match load(path, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let policy = config.compile_policy();
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        let _ = writeln!(
            out,
            "rejected: 400 invalid_request: `{method}` is not an HTTP method token"
        );
        return 1;
    };
    let uri: Uri = match target.parse() {
        Ok(u) => u,
        Err(e) => {
            let _ = writeln!(
                out,
                "rejected: 400 invalid_request: the target does not parse ({e})"
            );
            return 1;
        }
    };
    let verdict = policy.evaluate(&method, &uri);
    let _ = match (&verdict, ProxyError::from_verdict(&verdict)) {
        (Verdict::Allow { route, path }, _) => {
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            writeln!(
                out,
                "allowed: {method} {target}\n  permission: {}\n  route:      {}\n  forwarded:  {}://{}{path}{query}",
                route.permission, route.pattern, config.upstream.scheme, config.upstream.authority
            )
        }
        (Verdict::PermissionDenied { route, .. }, Some(e)) => writeln!(
            out,
            "denied: {} {}: route `{}` needs permission `{}`, which service `{}` is not granted",
            e.status().as_u16(),
            e.code(),
            route.pattern,
            route.permission,
            config.service.name
        ),
        (Verdict::NoRoute { path }, Some(e)) => writeln!(
            out,
            "denied: {} {}: no catalogue route matches {method} {path}",
            e.status().as_u16(),
            e.code()
        ),
        (Verdict::MethodNotAllowed, Some(e)) => writeln!(
            out,
            "rejected: {} {}: {}",
            e.status().as_u16(),
            e.code(),
            e.message()
        ),
        (Verdict::Rejected(rule), Some(e)) => writeln!(
            out,
            "rejected: {} {} ({}): {}",
            e.status().as_u16(),
            e.code(),
            rule.reason(),
            rule.describe()
        ),
        (_, None) => writeln!(out, "internal: a refusal without an error"),
    };
    if config.service.mode == Mode::Report
        && matches!(
            verdict,
            Verdict::PermissionDenied { .. } | Verdict::NoRoute { .. }
        )
    {
        let _ = writeln!(
            out,
            "  report mode: `run` forwards this request and logs it as would_deny"
        );
    }
    i32::from(!matches!(verdict, Verdict::Allow { .. }))
}
