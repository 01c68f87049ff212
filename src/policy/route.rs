//! Route patterns (`METHOD /path/{id}/{*rest}`) and the segment trie that matches them.
//!
//! Matching is per segment, never by byte prefix: `/v1/sandboxes` does not match
//! `/v1/sandboxesX`. When several routes match, the most specific wins, segment by segment
//! from the left (literal over `{param}` over `{*rest}`), then an exact method over `*`, then
//! the route declared first. The trie walks children in that order and stops at the first
//! hit, so a lookup costs the path depth, not the number of routes.

use std::collections::HashMap;

use http::Method;

use super::canon;

/// A parsed route pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// `None` is `*` (any method).
    pub method: Option<Method>,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param(String),
    /// `{*name}`: one or more trailing segments.
    Rest(String),
}

/// Why a route pattern does not parse (or could never match).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("expected `METHOD /path`")]
    Shape,
    #[error("`{0}` is not an HTTP method token")]
    Method(String),
    #[error("the path must start with '/'")]
    NoLeadingSlash,
    #[error("`{{*name}}` must be the last segment")]
    RestNotLast,
    #[error("`{0}` is not a valid `{{name}}` segment")]
    BadParam(String),
    #[error("segment `{segment}` can never match: {why}")]
    NeverMatches { segment: String, why: &'static str },
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut parts = text.split_ascii_whitespace();
        let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PatternError::Shape);
        };
        let method = match method {
            "*" => None,
            m => {
                Some(Method::from_bytes(m.as_bytes()).map_err(|_| PatternError::Method(m.into()))?)
            }
        };
        let rest = path.strip_prefix('/').ok_or(PatternError::NoLeadingSlash)?;
        let raw: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            let last = i + 1 == raw.len();
            segments.push(parse_segment(seg, last)?);
        }
        Ok(Self { method, segments })
    }
}

fn parse_segment(seg: &str, last: bool) -> Result<Segment, PatternError> {
    if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        let (rest, name) = match inner.strip_prefix('*') {
            Some(name) => (true, name),
            None => (false, inner),
        };
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(PatternError::BadParam(seg.into()));
        }
        return match (rest, last) {
            (true, true) => Ok(Segment::Rest(name.into())),
            (true, false) => Err(PatternError::RestNotLast),
            (false, _) => Ok(Segment::Param(name.into())),
        };
    }
    if seg.contains(['{', '}']) {
        return Err(PatternError::BadParam(seg.into()));
    }
    // A literal must already be canonical, or no screened request could ever equal it.
    let never = |why| PatternError::NeverMatches {
        segment: seg.into(),
        why,
    };
    if seg.is_empty() && !last {
        return Err(never("empty segments ('//') are rejected"));
    }
    let probe = format!("/{seg}");
    match canon::canonicalize(&probe) {
        Ok(c) if c == probe => Ok(Segment::Literal(seg.into())),
        Ok(_) => Err(never("it is not in canonical form")),
        Err(e) => Err(never(e.describe())),
    }
}

/// Index of a route in the compiled policy.
pub type RouteId = u32;

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes ending here.
    end: Vec<(Option<Method>, RouteId)>,
    /// `{*rest}` routes whose rest starts here.
    rest: Vec<(Option<Method>, RouteId)>,
}

/// All routes of a catalogue, ready for lookups.
#[derive(Debug, Default)]
pub struct Trie {
    root: Node,
}

impl Trie {
    pub fn insert(&mut self, pattern: &Pattern, id: RouteId) {
        let mut node = &mut self.root;
        for seg in &pattern.segments {
            match seg {
                Segment::Literal(l) => node = node.literal.entry(l.as_str().into()).or_default(),
                Segment::Param(_) => node = node.param.get_or_insert_with(Box::default),
                Segment::Rest(_) => {
                    node.rest.push((pattern.method.clone(), id));
                    return;
                }
            }
        }
        node.end.push((pattern.method.clone(), id));
    }

    /// The most specific route matching `method` and the canonical `path`.
    pub fn lookup(&self, method: &Method, path: &str) -> Option<RouteId> {
        let rest = path.strip_prefix('/')?;
        find(&self.root, method, Some(rest))
    }
}

/// `remaining` is what follows the last consumed '/', or `None` when the path is used up.
fn find(node: &Node, method: &Method, remaining: Option<&str>) -> Option<RouteId> {
    let Some(remaining) = remaining else {
        return pick(&node.end, method);
    };
    let (head, tail) = match remaining.split_once('/') {
        Some((h, t)) => (h, Some(t)),
        None => (remaining, None),
    };
    if let Some(found) = node.literal.get(head).and_then(|n| find(n, method, tail)) {
        return Some(found);
    }
    if !head.is_empty() {
        if let Some(found) = node.param.as_deref().and_then(|n| find(n, method, tail)) {
            return Some(found);
        }
        return pick(&node.rest, method);
    }
    None
}

/// Exact method first, then `*`; declaration order within each.
fn pick(routes: &[(Option<Method>, RouteId)], method: &Method) -> Option<RouteId> {
    let exact = routes.iter().find(|(m, _)| m.as_ref() == Some(method));
    exact
        .or_else(|| routes.iter().find(|(m, _)| m.is_none()))
        .map(|(_, id)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_patterns() {
        let p = Pattern::parse("GET /v1/sandboxes/{id}/{*rest}").unwrap();
        assert_eq!(p.method, Some(Method::GET));
        assert_eq!(
            p.segments,
            vec![
                Segment::Literal("v1".into()),
                Segment::Literal("sandboxes".into()),
                Segment::Param("id".into()),
                Segment::Rest("rest".into()),
            ]
        );
        assert_eq!(Pattern::parse("* /x").unwrap().method, None);
        assert!(Pattern::parse("/x").is_err());
        assert!(Pattern::parse("GET x").is_err());
        assert!(Pattern::parse("GET /{*a}/b").is_err());
        assert!(Pattern::parse("GET /{}").is_err());
        assert!(Pattern::parse("GET /a{b}").is_err());
        assert!(Pattern::parse("GET /a//b").is_err());
        assert!(Pattern::parse("GET /a/../b").is_err());
        assert!(Pattern::parse("GET /%61").is_err());
        assert!(Pattern::parse("G(T /a").is_err());
        assert!(Pattern::parse("GET /a b").is_err());
    }

    fn trie(patterns: &[&str]) -> Trie {
        let mut t = Trie::default();
        for (i, p) in patterns.iter().enumerate() {
            t.insert(&Pattern::parse(p).unwrap(), i as RouteId);
        }
        t
    }

    #[test]
    fn most_specific_wins() {
        let t = trie(&[
            "GET /v1/sandboxes/{id}/{*rest}",
            "GET /v1/sandboxes/{id}",
            "GET /v1/sandboxes/{id}/usage",
            "* /v1/sandboxes/{id}/usage",
            "POST /v1/sandboxes",
            "GET /v1/sandboxes/",
            "GET /",
        ]);
        let get = Method::GET;
        assert_eq!(t.lookup(&get, "/v1/sandboxes/sb1/usage"), Some(2));
        assert_eq!(
            t.lookup(&Method::DELETE, "/v1/sandboxes/sb1/usage"),
            Some(3)
        );
        assert_eq!(t.lookup(&get, "/v1/sandboxes/sb1/files/a/b"), Some(0));
        assert_eq!(t.lookup(&get, "/v1/sandboxes/sb1"), Some(1));
        // `{*rest}` needs a non-empty first segment, like `{id}`.
        assert_eq!(t.lookup(&get, "/v1/sandboxes/sb1/"), None);
        assert_eq!(t.lookup(&get, "/v1/sandboxes/"), Some(5));
        assert_eq!(t.lookup(&get, "/v1/sandboxes"), None);
        assert_eq!(t.lookup(&get, "/v1/sandboxesX"), None);
        assert_eq!(t.lookup(&Method::POST, "/v1/sandboxes"), Some(4));
        assert_eq!(t.lookup(&Method::POST, "/v1/sandboxes/"), None);
        assert_eq!(t.lookup(&get, "/"), Some(6));
        assert_eq!(t.lookup(&get, "/V1/sandboxes/sb1"), None);
    }

    #[test]
    fn falls_back_when_a_literal_branch_has_no_route_for_the_method() {
        let t = trie(&["POST /v1/sandboxes/{id}/exec", "* /v1/{*rest}"]);
        assert_eq!(t.lookup(&Method::POST, "/v1/sandboxes/a/exec"), Some(0));
        assert_eq!(t.lookup(&Method::GET, "/v1/sandboxes/a/exec"), Some(1));
    }

    #[test]
    fn param_needs_a_non_empty_segment() {
        let t = trie(&["GET /a/{id}", "GET /b/{*rest}"]);
        assert_eq!(t.lookup(&Method::GET, "/a/"), None);
        assert_eq!(t.lookup(&Method::GET, "/b/"), None);
        assert_eq!(t.lookup(&Method::GET, "/b/x"), Some(1));
    }
}
