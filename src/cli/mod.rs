//! `sidekey check` and `sidekey explain`: the config and the policy as `run` sees them.
//! Both write to a caller-supplied writer and return the process exit code.

pub mod catalogue;
mod check;
pub mod demo;
pub mod forward;
pub mod init;
pub mod kube;
pub mod rotation;
pub mod suggest;

pub use check::{check, online as check_online};

use std::io::Write;
use std::path::Path;

use http::{Method, Uri};

use crate::config::{Config, Expect, Mode, Principal};
use std::sync::Arc;

use crate::policy::apis::{Router, decide};
use crate::policy::{Policy, Verdict};
use crate::proxy::ProxyError;

/// Exit code for a bad config (BSD `EX_USAGE`, as linkerd uses).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// How `check` reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions<'a> {
    /// Lints become errors (exit 1).
    pub strict: bool,
    /// Machine-readable output.
    pub json: bool,
    /// An OpenAPI description to check the catalogue against (drift lints), and the API
    /// whose catalogue it describes (needed with several APIs).
    pub openapi: Option<&'a Path>,
    pub api: Option<&'a str>,
}

/// The decision class of a verdict, as `[[test]] expect` names it. `policies`: the
/// principal's, per API; the target is the local path (with the API's prefix).
pub fn decision_of(
    router: &Router,
    policies: &[Arc<Policy>],
    method: &str,
    target: &str,
) -> Expect {
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), target.parse::<Uri>())
    else {
        return Expect::Reject;
    };
    match decide(router, policies, None, &method, &uri).verdict {
        Verdict::Allow { .. } => Expect::Allow,
        Verdict::PermissionDenied { .. } | Verdict::NoRoute { .. } => Expect::Deny,
        Verdict::MethodNotAllowed | Verdict::Rejected(_) => Expect::Reject,
    }
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
    caller: Option<&str>,
    method: &str,
    target: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let config = match load(path, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let principal = match pick(&config, caller) {
        Ok(p) => p,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return EXIT_BAD_CONFIG;
        }
    };
    let policies = config.compile_policies(principal);
    let router = config.router();
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
    let decision = decide(&router, &policies, None, &method, &uri);
    let api = decision.api.and_then(|a| config.apis.get(a));
    if config.named_apis {
        let _ = match api {
            Some(a) => writeln!(out, "api: {} ({})", a.name, a.upstream.url),
            None => writeln!(out, "api: none (no API's path_prefix holds this path)"),
        };
    }
    let verdict = decision.verdict;
    let _ = match (&verdict, ProxyError::from_verdict(&verdict), api) {
        (Verdict::Allow { route, path }, _, Some(api)) => {
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let permission = config.qualified(decision.api.unwrap_or(0), &route.permission);
            let websocket = match (route.websocket, method == Method::GET) {
                (true, _) => "\n  websocket:  accepted (the route has websocket = true)",
                (false, true) => {
                    "\n  websocket:  not accepted: a handshake gets 403 upgrade_not_allowed"
                }
                (false, false) => "",
            };
            // Where the key goes (never a value); a path template goes in front of the path.
            let spec = decision
                .api
                .and_then(|a| principal.credentials.get(a).copied().flatten())
                .and_then(|slot| config.credentials.get(slot))
                .map(|c| &c.config);
            let key_at = spec.map_or_else(
                || "none configured: 503 credential_unavailable".to_owned(),
                |s| s.scheme.placement(),
            );
            let front = spec
                .and_then(|s| s.scheme.templates())
                .and_then(|t| t.get(decision.template).or(t.first()))
                .map_or("", |t| t.as_str());
            writeln!(
                out,
                "allowed: {method} {target}\n  permission: {permission}\n  route:      {}\n  forwarded:  {}://{}{front}{path}{query}\n  credential: {key_at}{websocket}",
                route.pattern, api.upstream.scheme, api.upstream.authority
            )
        }
        (Verdict::PermissionDenied { route, .. }, Some(e), _) => writeln!(
            out,
            "denied: {} {}: route `{}` needs permission `{}`, which {} `{}` is not granted",
            e.status().as_u16(),
            e.code(),
            route.pattern,
            config.qualified(decision.api.unwrap_or(0), &route.permission),
            if config.gateway { "caller" } else { "service" },
            principal.name
        ),
        (Verdict::NoRoute { path }, Some(e), _) => writeln!(
            out,
            "denied: {} {}: no catalogue route matches {method} {path}",
            e.status().as_u16(),
            e.code()
        ),
        (Verdict::MethodNotAllowed, Some(e), _) => writeln!(
            out,
            "rejected: {} {}: {}",
            e.status().as_u16(),
            e.code(),
            e.message()
        ),
        (Verdict::Rejected(rule), Some(e), _) => writeln!(
            out,
            "rejected: {} {} ({}): {}",
            e.status().as_u16(),
            e.code(),
            rule.reason(),
            rule.describe()
        ),
        (Verdict::Allow { .. }, _, None) | (_, None, _) => {
            writeln!(out, "internal: a refusal without an error")
        }
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

/// The principal a command is about: the service, or the gateway caller named `caller`.
pub fn pick<'c>(config: &'c Config, caller: Option<&str>) -> Result<&'c Principal, String> {
    let names = || {
        config
            .principals
            .iter()
            .map(|p| &*p.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (caller, config.gateway) {
        (None, false) => config
            .principals
            .first()
            .ok_or_else(|| "the config has no service".to_owned()),
        (None, true) => Err(format!(
            "this is a gateway config: pass --caller (one of: {})",
            names()
        )),
        (Some(name), _) => config
            .principal(name)
            .map(|(_, p)| p)
            .ok_or_else(|| format!("no caller named `{name}` (callers: {})", names())),
    }
}

/// `sidekey token new`: a fresh caller token, printed once, and the config line holding only
/// its SHA-256. 0 ok, 1 no randomness.
pub fn token_new(caller: &str, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let token = match crate::proxy::caller::new_token() {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 1;
        }
    };
    let _ = writeln!(
        out,
        "# caller token for `{caller}`: give it to the caller now; sidekey keeps only its hash\n\
         token = \"{token}\"\n\n\
         # paste into the gateway config:\n\
         [[caller]]\n\
         name = \"{caller}\"\n\
         token_sha256 = \"{}\"",
        crate::proxy::caller::token_sha256(&token)
    );
    0
}

/// `sidekey fingerprint [FILE|-]`: a key's fingerprint exactly as `/credential`, the logs
/// and `sidekey_credential_info` show it (surrounding whitespace trimmed, as when loaded).
pub fn fingerprint(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    use std::io::Read as _;
    let mut raw = zeroize::Zeroizing::new(Vec::new());
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut raw).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut raw).map(|_| ()))
    };
    if let Err(e) = read {
        let _ = writeln!(err, "error: cannot read {}: {e}", path.display());
        return EXIT_BAD_CONFIG;
    }
    match crate::credential::validate_key(&raw) {
        Ok(key) => {
            let _ = writeln!(out, "{}", crate::credential::fingerprint(key));
            0
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            1
        }
    }
}
