//! `sidekey check` and `sidekey explain`: the config and the policy as `run` sees them.
//! Both write to a caller-supplied writer and return the process exit code.

use std::io::Write;
use std::path::Path;

use http::{Method, Uri};

use crate::config::{Config, CredentialSource};
use crate::policy::Verdict;
use crate::proxy::ProxyError;
use crate::secret::Credential;

/// Exit code for a bad config (BSD `EX_USAGE`, as linkerd uses).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Validates the config and prints the effective table. 0 ok, 64 bad.
pub fn check(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let _ = print_table(&config, out);
    // The key is a runtime input (it may be mounted later), so its absence is a note here.
    if let Err(e) = Credential::load(&config.credential) {
        let _ = writeln!(
            out,
            "note: no valid API key right now ({e}); `run` would start not ready"
        );
    }
    0
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
    writeln!(out, "service {}", config.service.name)?;
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

/// Prints the decision `run` would make. 0 allowed, 1 denied or rejected, 64 bad config.
pub fn explain(
    path: &Path,
    method: &str,
    target: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let allow = &config.service.allow;
    let policy = crate::policy::Policy::new(config.catalogue.clone(), |p| {
        allow.iter().any(|a| **a == *p)
    });
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
    i32::from(!matches!(verdict, Verdict::Allow { .. }))
}
