//! `sidekey suggest`: the minimal grant that covers observed traffic. Reads sidekey's own
//! JSON access log, looks every request up in the catalogue (grants ignored) with the same
//! matcher as `run`, and prints the permissions that matched, with counts, plus the requests
//! no catalogue route covers (those need a catalogue entry, not a grant). It never suggests
//! a permission that no observed request needed.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use http::Method;

use crate::cli::EXIT_BAD_CONFIG;
use crate::config::{Config, Principal};
use crate::policy::Policy;

/// What the log held, tallied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// permission -> requests that needed it.
    pub permissions: BTreeMap<String, u64>,
    /// "METHOD /path" -> count, for requests no catalogue route matches.
    pub uncovered: BTreeMap<String, u64>,
    /// Access-log lines read (requests), and lines skipped (other logs, rejected, too old).
    pub requests: u64,
    pub skipped: u64,
}

/// Tallies access-log lines against the catalogue of `config` (only `caller`'s lines, when
/// given: a gateway's log interleaves every caller).
pub fn tally(
    config: &Config,
    log: impl BufRead,
    since: Option<SystemTime>,
    caller: Option<&str>,
) -> Tally {
    // Grants do not matter here: every catalogue route counts. The log's `path` is the
    // path under the API's prefix, and `api` names the API.
    let policies: Vec<Policy> = config
        .apis
        .iter()
        .map(|a| Policy::new(a.catalogue.clone(), |_| true))
        .collect();
    let mut t = Tally::default();
    for line in log.lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            t.skipped += 1;
            continue;
        };
        let target = v["target"].as_str().unwrap_or("sidekey::access");
        let (Some(method), Some(path)) = (v["method"].as_str(), v["path"].as_str()) else {
            t.skipped += 1;
            continue;
        };
        let other_caller = caller.is_some_and(|c| v["caller"].as_str() != Some(c));
        if target != "sidekey::access" || v["decision"] == "reject" || other_caller {
            t.skipped += 1;
            continue;
        }
        if let Some(since) = since {
            let at = v["timestamp"]
                .as_str()
                .and_then(|s| humantime::parse_rfc3339_weak(s).ok());
            if at.is_none_or(|at| at < since) {
                t.skipped += 1;
                continue;
            }
        }
        t.requests += 1;
        let api = match v["api"].as_str() {
            Some(name) => config.apis.iter().position(|a| &*a.name == name),
            None if !config.named_apis => Some(0),
            None => None,
        };
        let route = Method::from_bytes(method.as_bytes())
            .ok()
            .zip(api.and_then(|a| policies.get(a)))
            .and_then(|(m, policy)| policy.lookup(&m, path));
        match (route, api) {
            (Some(r), Some(a)) => {
                *t.permissions
                    .entry(config.qualified(a, &r.permission))
                    .or_default() += 1;
            }
            _ => {
                let under = match api.and_then(|a| config.apis.get(a)) {
                    Some(a) if config.named_apis => format!("api.{}: ", a.name),
                    _ => String::new(),
                };
                *t.uncovered
                    .entry(format!("{under}{method} {path}"))
                    .or_default() += 1;
            }
        }
    }
    t
}

/// The `suggest` command. 0 ok, 64 bad config or unreadable log.
pub fn run(
    config_path: &Path,
    log_path: &Path,
    since: Option<Duration>,
    caller: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let config = match crate::cli::load(config_path, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let principal = match crate::cli::pick(&config, caller) {
        Ok(p) => p.clone(),
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return EXIT_BAD_CONFIG;
        }
    };
    // In a gateway log, only this caller's lines count.
    let only = config.gateway.then_some(&*principal.name);
    let since = since.and_then(|d| SystemTime::now().checked_sub(d));
    let t = if log_path == Path::new("-") {
        tally(&config, std::io::stdin().lock(), since, only)
    } else {
        match std::fs::File::open(log_path) {
            Ok(f) => tally(&config, std::io::BufReader::new(f), since, only),
            Err(e) => {
                let _ = writeln!(err, "error: cannot read {}: {e}", log_path.display());
                return EXIT_BAD_CONFIG;
            }
        }
    };
    let _ = print(&t, &principal, config.gateway, out);
    0
}

fn print(
    t: &Tally,
    principal: &Principal,
    gateway: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "# {} requests observed ({} lines skipped); {} `{}`",
        t.requests,
        t.skipped,
        if gateway { "caller" } else { "service" },
        principal.name
    )?;
    let names: Vec<String> = t.permissions.keys().map(|p| format!("\"{p}\"")).collect();
    writeln!(out, "allow = [{}]", names.join(", "))?;
    for (p, n) in &t.permissions {
        let now = if principal.allow.iter().any(|a| **a == **p) {
            "granted now"
        } else {
            "NOT granted now"
        };
        writeln!(out, "#   {p}: {n} requests ({now})")?;
    }
    let unused: Vec<&str> = principal
        .allow
        .iter()
        .filter(|a| !t.permissions.contains_key(&***a))
        .map(|a| &**a)
        .collect();
    if !unused.is_empty() {
        writeln!(
            out,
            "# granted now but not needed by this traffic: {}",
            unused.join(", ")
        )?;
    }
    if !t.uncovered.is_empty() {
        writeln!(
            out,
            "# not covered by any catalogue route (add a catalogue entry, not a grant):"
        )?;
        for (r, n) in &t.uncovered {
            writeln!(out, "#   {r} ({n})")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_log_is_tallied_per_caller() {
        let dir = std::env::temp_dir().join(format!("sidekey-suggest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "sk_test_x").unwrap();
        let path = dir.join("gw.toml");
        let hash = crate::proxy::caller::token_sha256("t");
        let text = format!(
            "[upstream]\nurl = \"https://api.example.com\"\n[credential]\nfile = \"k\"\n\
             [permissions]\nread = [\"GET /v1/x\"]\nwrite = [\"POST /v1/x\"]\n\
             [[caller]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nallow = [\"read\"]\n"
        );
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let log = [
            r#"{"target":"sidekey::access","caller":"a","method":"GET","path":"/v1/x","decision":"allow"}"#,
            r#"{"target":"sidekey::access","caller":"b","method":"POST","path":"/v1/x","decision":"allow"}"#,
            r#"{"target":"sidekey::access","method":"POST","path":"/v1/x","decision":"deny"}"#,
        ]
        .join("\n");
        let t = tally(&config, log.as_bytes(), None, Some("a"));
        assert_eq!(t.requests, 1);
        assert_eq!(t.permissions.keys().collect::<Vec<_>>(), ["read"]);
        let all = tally(&config, log.as_bytes(), None, None);
        assert_eq!(all.requests, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn several_apis_are_tallied_with_qualified_names() {
        let dir = std::env::temp_dir().join(format!("sidekey-suggest-apis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.toml");
        let text = "[api.banata]\nurl = \"https://a.example\"\npath_prefix = \"/\"\ncredential = { file = \"k\" }\n\
             [api.banata.permissions]\nread = [\"GET /v1/x\"]\n\
             [api.openai]\nurl = \"https://b.example\"\npath_prefix = \"/openai\"\ncredential = { file = \"k2\" }\n\
             [api.openai.permissions]\n\"models:read\" = [\"GET /v1/x\"]\n\
             [service]\nname = \"s\"\nallow = [\"banata/read\"]\n";
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        // The log's path is under the API's prefix; `api` names the API.
        let log = [
            r#"{"target":"sidekey::access","api":"openai","method":"GET","path":"/v1/x","decision":"deny"}"#,
            r#"{"target":"sidekey::access","api":"banata","method":"GET","path":"/v1/x","decision":"allow"}"#,
            r#"{"target":"sidekey::access","api":"openai","method":"GET","path":"/v2/y","decision":"deny"}"#,
        ]
        .join("\n");
        let t = tally(&config, log.as_bytes(), None, None);
        assert_eq!(
            t.permissions.keys().collect::<Vec<_>>(),
            ["banata/read", "openai/models:read"]
        );
        assert_eq!(
            t.uncovered.keys().collect::<Vec<_>>(),
            ["api.openai: GET /v2/y"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
