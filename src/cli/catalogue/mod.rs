//! `sidekey catalogue import SPEC`: an OpenAPI description turned into a permission
//! catalogue draft (the TOML `permissions_file` reads), one route per operation; and the
//! drift report `sidekey check --openapi SPEC` prints ([`drift`]).
//!
//! Permission names come from per-operation OAuth scopes (`--by scopes`, the default when the
//! spec has security data), a vendor extension (`--by extension`), or tags with read/write by
//! method (`--by tags`). The same spec gives byte-identical output.

pub mod drift;
pub mod spec;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cli::EXIT_BAD_CONFIG;
use crate::policy::{Pattern, Policy, RouteSpec};
use spec::{Input, Operation, Spec};

/// Where permission names come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Scopes,
    Tags,
    Extension,
}

/// One operation as a catalogue route.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: String,
    /// In sidekey's pattern syntax (`{name}` is one segment).
    pub template: String,
    pub permission: String,
    pub operation_id: Option<String>,
    pub deprecated: bool,
    /// Why the permission was chosen, when there was a choice.
    pub note: Option<String>,
}

/// Hashes what passes through it.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Reads SPEC (JSON or YAML; `-` for stdin) and returns it with its SHA-256. JSON streams
/// (memory follows the operations kept, not the file); YAML is read whole.
pub fn read(path: &Path) -> Result<(Spec, String), String> {
    use std::io::{BufRead as _, Read as _};
    let source: Box<dyn std::io::Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        )
    };
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, source);
    let buf = reader.fill_buf().map_err(|e| e.to_string())?;
    let json = match buf.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(i) => buf.get(i) == Some(&b'{'),
        None if buf.is_empty() => return Err("at /: empty input".into()),
        None => {
            // Whitespace only in the first chunk: read the rest whole to decide.
            let mut head = vec![0u8; buf.len()];
            reader.read_exact(&mut head).map_err(|e| e.to_string())?;
            return read_rest(reader, &head);
        }
    };
    let mut hashing = Hashing {
        inner: reader,
        sha: Sha256::new(),
    };
    let spec = if json {
        spec::parse(Input::Json(Box::new(&mut hashing)))?
    } else {
        let mut text = String::new();
        hashing
            .read_to_string(&mut text)
            .map_err(|_| "at /: not UTF-8 text".to_owned())?;
        spec::parse(Input::Yaml(&text))?
    };
    // The parser may stop before the end (trailing whitespace): hash the rest too.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| e.to_string())?;
    Ok((spec, hex(&hashing.sha.finalize())))
}

/// A spec whose first chunk was all whitespace: the rest decides (rare; read whole).
fn read_rest(mut reader: impl std::io::Read, head: &[u8]) -> Result<(Spec, String), String> {
    let mut bytes = head.to_vec();
    reader.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let sha = hex(&Sha256::digest(&bytes));
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let spec = match first {
        None => return Err("at /: empty input".into()),
        Some(b'{') => spec::parse(Input::Json(Box::new(bytes.as_slice())))?,
        Some(_) => spec::parse(Input::Yaml(
            std::str::from_utf8(&bytes).map_err(|_| "at /: not UTF-8 text".to_owned())?,
        ))?,
    };
    Ok((spec, sha))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `/pets/{pet-id}` -> `/pets/{pet_id}`; a segment that mixes a parameter with text
/// (`{name}.json`) becomes a whole-segment parameter, which is broader (said in `note`).
fn template(base: &str, path: &str) -> (String, Option<String>) {
    let mut note = None;
    let mut out = String::new();
    let joined = format!("{base}{path}");
    for seg in joined.split('/').skip(1) {
        out.push('/');
        let open = seg.find('{');
        let close = seg.rfind('}');
        match (open, close) {
            (Some(0), Some(c)) if c + 1 == seg.len() && seg.matches('{').count() == 1 => {
                let name: String = seg
                    .get(1..c)
                    .unwrap_or("p")
                    .chars()
                    .map(|ch| {
                        if ch.is_ascii_alphanumeric() || ch == '_' {
                            ch
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let name = if name.is_empty() { "p".into() } else { name };
                let _ = write!(out, "{{{name}}}");
            }
            (Some(_), Some(_)) => {
                note = Some(format!(
                    "segment `{seg}` matched as a whole parameter (broader than the spec)"
                ));
                out.push_str("{param}");
            }
            _ => out.push_str(seg),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    (out, note)
}

/// Two templates the OpenAPI rules call the same path: `/pets/{a}` and `/pets/{b}`.
fn shape(method: &str, template: &str) -> String {
    let segs: Vec<&str> = template
        .split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect();
    format!("{method} {}", segs.join("/"))
}

fn is_read(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Picks one scope of an operation's requirements: for a read one that says `read`, for a
/// write one that says `write`, else the first; `note` names the others.
fn pick_scope(method: &str, reqs: &[spec::Requirement]) -> Option<(String, Option<String>)> {
    let scopes: Vec<&String> = reqs.iter().flat_map(|r| r.values().flatten()).collect();
    let first = scopes.first()?;
    let want = if is_read(method) { "read" } else { "write" };
    let chosen = scopes
        .iter()
        .find(|s| s.to_ascii_lowercase().contains(want))
        .unwrap_or(first);
    let note = (scopes.len() > 1).then(|| {
        let all: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let why = if chosen.to_ascii_lowercase().contains(want) {
            format!("the {want} one for a {method}")
        } else {
            "the first listed".to_owned()
        };
        format!("scopes listed: {}; took `{chosen}` ({why})", all.join(", "))
    });
    Some(((*chosen).clone(), note))
}

fn from_extension(value: &serde_json::Value) -> Option<(String, Option<String>)> {
    use serde_json::Value;
    let names: Vec<String> = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .flat_map(|v| match v {
                Value::String(s) => vec![s.clone()],
                // Atlassian: [{ "scheme": ..., "state": ..., "scopes": [...] }]
                Value::Object(o) => o
                    .get("scopes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let first = names.first()?.clone();
    let note = (names.len() > 1).then(|| format!("listed: {}; took the first", names.join(", ")));
    Some((first, note))
}

fn by_tag(method: &str, op: &Operation) -> String {
    let tag = op.tags.first().map_or("untagged", String::as_str);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_whitespace() {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    format!("{tag}:{}", if is_read(method) { "read" } else { "write" })
}

/// Every operation as a route, merged where the OpenAPI rules call two templates the same.
pub fn routes(spec: &Spec, by: Option<By>, extension: &str) -> (Vec<Route>, By) {
    let has_security = spec.security.is_some()
        || spec
            .paths
            .values()
            .flat_map(|p| p.operations.values())
            .any(|o| o.security.is_some());
    let by = by.unwrap_or(if has_security { By::Scopes } else { By::Tags });
    let swagger = spec.swagger.is_some();
    let root = if swagger {
        spec.base_path
            .clone()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned()
    } else {
        spec.servers
            .first()
            .map(|s| spec::server_path(&s.url))
            .unwrap_or_default()
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<Route> = Vec::new();
    for (path, item) in &spec.paths {
        for (method, op) in &item.operations {
            let method = method.to_ascii_uppercase();
            let servers = if !op.servers.is_empty() {
                &op.servers
            } else {
                &item.servers
            };
            let base = match servers.first() {
                Some(s) if !swagger => spec::server_path(&s.url),
                _ => root.clone(),
            };
            let (template, mut note) = template(&base, path);
            let reqs = op.security.as_ref().or(spec.security.as_ref());
            let chosen = match by {
                By::Scopes => reqs.and_then(|r| pick_scope(&method, r)),
                By::Extension => op.extensions.get(extension).and_then(from_extension),
                By::Tags => None,
            };
            let permission = match chosen {
                Some((p, n)) => {
                    note = match (note, n) {
                        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                        (a, b) => a.or(b),
                    };
                    p
                }
                None if by == By::Tags => by_tag(&method, op),
                None => {
                    note = Some(format!(
                        "no {} here: named by tag",
                        match by {
                            By::Scopes => "scopes",
                            _ => "extension",
                        }
                    ));
                    by_tag(&method, op)
                }
            };
            let key = shape(&method, &template);
            if let Some(&i) = seen.get(&key) {
                if let Some(r) = out.get_mut(i) {
                    let merged = format!(
                        "also `{method} {base}{path}` ({})",
                        op.operation_id.as_deref().unwrap_or("no operationId")
                    );
                    r.note = Some(match r.note.take() {
                        Some(n) => format!("{n}; {merged}"),
                        None => merged,
                    });
                }
                continue;
            }
            seen.insert(key, out.len());
            out.push(Route {
                method,
                template,
                permission,
                operation_id: op.operation_id.clone(),
                deprecated: op.deprecated,
                note,
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.permission, &a.template, &a.method).cmp(&(&b.permission, &b.template, &b.method))
    });
    (out, by)
}

fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The catalogue TOML for `routes`.
pub fn render(spec: &Spec, sha: &str, by: By, routes: &[Route], api: Option<&str>) -> String {
    let mut out = String::new();
    let title = spec.info.title.as_deref().unwrap_or("(untitled)");
    let version = spec.info.version.as_deref().unwrap_or("(no version)");
    let _ = writeln!(
        out,
        "# Generated by `sidekey catalogue import` from \"{title}\" {version}"
    );
    let _ = writeln!(out, "# spec sha256: {sha}");
    let _ = writeln!(
        out,
        "# permissions named by: {}",
        match by {
            By::Scopes => "OAuth scopes per operation",
            By::Tags => "tags, read for GET/HEAD/OPTIONS and write otherwise",
            By::Extension => "the vendor extension",
        }
    );
    let _ = writeln!(
        out,
        "# A reviewed draft: read each permission's routes before granting it."
    );
    let specs: Vec<RouteSpec> = routes
        .iter()
        .filter_map(|r| {
            let text = format!("{} {}", r.method, r.template);
            Some(RouteSpec {
                permission: r.permission.as_str().into(),
                pattern: Pattern::parse(&text).ok()?,
                text: text.into(),
                websocket: false,
            })
        })
        .collect();
    let all: Vec<Arc<str>> = specs.iter().map(|s| s.permission.clone()).collect();
    let policy = Policy::new(specs.clone(), |_| true);
    for lint in crate::policy::lint::lint(&policy, &specs, &all) {
        if lint.kind != "granted_never_matches" {
            let _ = writeln!(out, "# conflict ({}): {}", lint.kind, lint.message);
        }
    }
    let _ = writeln!(out);
    let _ = match api {
        Some(name) => writeln!(out, "[api.{}.permissions]", quote(name)),
        None => writeln!(out, "[permissions]"),
    };
    let mut current: Option<&str> = None;
    for r in routes {
        if current != Some(r.permission.as_str()) {
            if current.is_some() {
                let _ = writeln!(out, "]");
            }
            let _ = writeln!(out, "{} = [", quote(&r.permission));
            current = Some(&r.permission);
        }
        let mut comment = r
            .operation_id
            .clone()
            .unwrap_or_else(|| "no operationId".into());
        if r.deprecated {
            comment.push_str("; DEPRECATED");
        }
        if let Some(n) = &r.note {
            let _ = write!(comment, "; {n}");
        }
        let _ = writeln!(
            out,
            "  {},  # {}",
            quote(&format!("{} {}", r.method, r.template)),
            comment.replace('\n', " ")
        );
    }
    if current.is_some() {
        let _ = writeln!(out, "]");
    }
    out
}

/// `sidekey catalogue import`.
pub fn import(
    path: &Path,
    by: Option<By>,
    extension: &str,
    api: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let (spec, sha) = match read(path) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: {}: {e}", path.display());
            return EXIT_BAD_CONFIG;
        }
    };
    let (routes, by) = routes(&spec, by, extension);
    let _ = out.write_all(render(&spec, &sha, by, &routes, api).as_bytes());
    0
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
