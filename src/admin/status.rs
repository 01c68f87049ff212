//! `GET /` on the admin listener: a small self-refreshing HTML page for people with a
//! laptop or a port-forward. Readiness and why, each key's fingerprint, source, age and last
//! error, requests by api/permission/decision over the last 5 minutes, the last denials and
//! rejects, and the `allow` line that would cover them. No external assets, no script; it
//! reads as plain text without CSS. It never shows a key, a caller token or a query string.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::control::state::Shared;
use crate::telemetry;

/// (api, permission, decision) -> requests.
type Counts = BTreeMap<(String, String, String), u64>;

/// Counter samples, newest last, kept for 5 minutes (admin side only, never the request path).
static SAMPLES: Mutex<VecDeque<(Instant, Counts)>> = Mutex::new(VecDeque::new());
const WINDOW: Duration = Duration::from_secs(300);

fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    labels
        .find(&key)
        .and_then(|i| labels.get(i + key.len()..))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
}

/// `sidekey_requests_total` from the metrics text, summed over caller and status.
fn counts() -> Counts {
    let text = telemetry::metrics().render();
    let mut out = Counts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(telemetry::REQUESTS_TOTAL) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.rsplit_once("} ")) else {
            continue;
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        let key = (
            label(labels, "api").to_owned(),
            label(labels, "permission").to_owned(),
            label(labels, "decision").to_owned(),
        );
        *out.entry(key).or_default() += n;
    }
    out
}

/// Samples the request counters every 30 s until `stop` (for the 5-minute table).
pub async fn sample(mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let now = Instant::now();
        let c = counts();
        if let Ok(mut s) = SAMPLES.lock() {
            s.push_back((now, c));
            while s
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            {
                s.pop_front();
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
            () = crate::shutdown::stopped(&mut stop) => return,
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn age(at: SystemTime) -> String {
    let secs = at.elapsed().map_or(0, |d| d.as_secs());
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// Where caller rates are decided, and the shared limiter's health.
fn limiter(h: &mut String, snap: &crate::control::state::Snapshot) {
    let Some(shared) = &snap.shared_limiter else {
        h.push_str("<h2>Rate limits</h2><p id=\"limiter\">Decided by this replica (local).</p>");
        return;
    };
    let s = shared.status();
    let text = |k: &str| s.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
    let healthy = shared.healthy();
    let _ = write!(
        h,
        "<h2>Rate limits</h2><p id=\"limiter\"{}>Shared in Redis at <code>{}</code>{}: {}{}. When it cannot decide: {}.</p>",
        if healthy { "" } else { " class=\"bad\"" },
        esc(&text("server")),
        if shared.settings().tls { " (TLS)" } else { "" },
        esc(&text("state")),
        if healthy {
            String::new()
        } else {
            format!(" (last error: {})", esc(&text("last_error")))
        },
        esc(&text("on_error")),
    );
}

/// The page.
pub fn page(shared: &Shared) -> String {
    let snap = shared.load();
    let cfg = &snap.config;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"10\"><title>sidekey: {}</title><style>body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:70em}}table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}.bad{{color:#b00}}</style></head><body>",
        esc(&cfg.service.name)
    );
    let _ = write!(h, "<h1>sidekey: {}</h1>", esc(&cfg.service.name));
    let _ = match shared.readiness() {
        Ok(()) => write!(
            h,
            "<p id=\"readiness\">Ready. Mode {}, generation {}.</p>",
            cfg.service.mode.as_str(),
            snap.generation
        ),
        Err(why) => write!(
            h,
            "<p id=\"readiness\" class=\"bad\">Not ready: {why}. Mode {}, generation {}.</p>",
            cfg.service.mode.as_str(),
            snap.generation
        ),
    };
    h.push_str("<h2>Keys</h2><table id=\"keys\"><tr><th>key</th><th>api</th><th>fingerprint</th><th>source</th><th>age</th><th>last error</th><th>pending key</th></tr>");
    for (named, key) in cfg.credentials.iter().zip(snap.credentials.iter()) {
        let api = cfg.apis.get(named.api).map_or("none", |a| &*a.name);
        let (fp, source, loaded) = match key {
            // A minted token: the secret's fingerprint, then the token's and its expiry.
            Some(k) => match k.token() {
                Some(t) => {
                    let left = t
                        .expires_at
                        .duration_since(std::time::SystemTime::now())
                        .map_or(0, |d| d.as_secs());
                    (
                        format!(
                            "{} (token {}, expires in {left} s)",
                            k.fingerprint(),
                            t.fingerprint
                        ),
                        k.source(),
                        age(k.loaded_at()),
                    )
                }
                None => (k.fingerprint().to_owned(), k.source(), age(k.loaded_at())),
            },
            None => ("none".into(), "-", "-".into()),
        };
        let error = shared.credential_error(&named.name).unwrap_or_default();
        // A rotated key held back by its verify request: which, why, since when.
        let pending = shared
            .credential_pending(&named.name)
            .map_or_else(String::new, |p| {
                let status = p
                    .status
                    .map_or_else(String::new, |s| format!(" (HTTP {s})"));
                format!("{} {}{status}, {}", p.fingerprint, p.state, age(p.since))
            });
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{source}</td><td>{loaded}</td><td class=\"bad\">{}</td><td class=\"pending\">{}</td></tr>",
            esc(&named.name),
            esc(api),
            esc(&fp),
            esc(&error),
            esc(&pending)
        );
    }
    h.push_str("</table>");
    limiter(&mut h, &snap);
    let now = counts();
    let (base, span) = match SAMPLES.lock().ok().and_then(|s| s.front().cloned()) {
        Some((t, c)) => (c, format!("last {} s", t.elapsed().as_secs().max(1))),
        None => (Counts::new(), "since start".into()),
    };
    let _ = write!(
        h,
        "<h2>Requests ({span})</h2><table id=\"requests\"><tr><th>api</th><th>permission</th><th>decision</th><th>requests</th></tr>"
    );
    for ((api, perm, decision), n) in &now {
        let d = n.saturating_sub(
            base.get(&(api.clone(), perm.clone(), decision.clone()))
                .copied()
                .unwrap_or(0),
        );
        if d > 0 {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{d}</td></tr>",
                esc(api),
                esc(perm),
                esc(decision)
            );
        }
    }
    h.push_str("</table>");
    let recent = shared.recent.list();
    let _ = write!(
        h,
        "<h2>Last {} denials and rejects</h2><table id=\"refusals\"><tr><th>when</th><th>caller</th><th>method</th><th>path</th><th>api</th><th>needs (permission or reason)</th><th>code</th></tr>",
        recent.len()
    );
    let mut missing: BTreeSet<String> = BTreeSet::new();
    for r in &recent {
        if let Some(m) = &r.missing {
            missing.insert(m.to_string());
        }
        let _ = write!(
            h,
            "<tr><td>{} ago</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            age(r.at),
            esc(r.caller.as_deref().unwrap_or("-")),
            esc(r.method.as_str()),
            esc(r.path.as_deref().unwrap_or("(rejected before a path)")),
            esc(r.api.as_deref().unwrap_or("-")),
            esc(r.missing.as_deref().or(r.reason).unwrap_or("-")),
            esc(r.code)
        );
    }
    h.push_str("</table>");
    if !missing.is_empty() && !cfg.gateway {
        let mut allow: BTreeSet<String> = cfg
            .principals
            .first()
            .map(|p| p.allow.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default();
        allow.extend(missing);
        let line: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
        let _ = write!(
            h,
            "<h2>To allow them</h2><p>Only if these calls are intended:</p><pre id=\"allow\">allow = [{}]</pre>",
            esc(&line.join(", "))
        );
    }
    h.push_str("</body></html>\n");
    h
}
