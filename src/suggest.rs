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
use crate::config::Config;
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

/// Tallies access-log lines against the catalogue of `config`.
pub fn tally(config: &Config, log: impl BufRead, since: Option<SystemTime>) -> Tally {
    // Grants do not matter here: every catalogue route counts.
    let policy = Policy::new(config.catalogue.clone(), |_| true);
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
        if target != "sidekey::access" || v["decision"] == "reject" {
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
        let route = Method::from_bytes(method.as_bytes())
            .ok()
            .and_then(|m| policy.lookup(&m, path));
        match route {
            Some(r) => *t.permissions.entry(r.permission.to_string()).or_default() += 1,
            None => *t.uncovered.entry(format!("{method} {path}")).or_default() += 1,
        }
    }
    t
}

/// The `suggest` command. 0 ok, 64 bad config or unreadable log.
pub fn run(
    config_path: &Path,
    log_path: &Path,
    since: Option<Duration>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let config = match crate::cli::load(config_path, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let since = since.and_then(|d| SystemTime::now().checked_sub(d));
    let t = if log_path == Path::new("-") {
        tally(&config, std::io::stdin().lock(), since)
    } else {
        match std::fs::File::open(log_path) {
            Ok(f) => tally(&config, std::io::BufReader::new(f), since),
            Err(e) => {
                let _ = writeln!(err, "error: cannot read {}: {e}", log_path.display());
                return EXIT_BAD_CONFIG;
            }
        }
    };
    let _ = print(&t, &config, out);
    0
}

fn print(t: &Tally, config: &Config, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "# {} requests observed ({} lines skipped); service `{}`",
        t.requests, t.skipped, config.service.name
    )?;
    let names: Vec<String> = t.permissions.keys().map(|p| format!("\"{p}\"")).collect();
    writeln!(out, "allow = [{}]", names.join(", "))?;
    for (p, n) in &t.permissions {
        let now = if config.service.allow.iter().any(|a| **a == **p) {
            "granted now"
        } else {
            "NOT granted now"
        };
        writeln!(out, "#   {p}: {n} requests ({now})")?;
    }
    let unused: Vec<&str> = config
        .service
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
