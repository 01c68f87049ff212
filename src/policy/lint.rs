//! Policy lints for `sidekey check`: overlapping routes of different permissions (and which
//! one wins, and why), duplicate method + pattern claims, and granted permissions that no
//! request can ever reach. Pure: a witness request is built for each overlap and decided by
//! the same lookup the proxy uses, so the lint reports what `run` would do.

use http::Method;

use super::route::{Pattern, Segment};
use super::{Policy, RouteSpec};

/// One finding. `message` is the human sentence; `kind` a stable tag for tooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lint {
    pub kind: &'static str,
    pub message: String,
}

/// Runs every lint over `specs` (the catalogue, in the order `policy` was built from).
pub fn lint(policy: &Policy, specs: &[RouteSpec], granted: &[std::sync::Arc<str>]) -> Vec<Lint> {
    let mut out = Vec::new();
    for (i, a) in specs.iter().enumerate() {
        for b in specs.iter().skip(i + 1) {
            if same_shape(&a.pattern, &b.pattern) {
                out.push(Lint {
                    kind: "duplicate_route",
                    message: format!(
                        "`{}` ({}) and `{}` ({}) claim the same method and path; the first declared wins",
                        a.text, a.permission, b.text, b.permission
                    ),
                });
                continue;
            }
            if a.permission == b.permission {
                continue;
            }
            let Some((method, path)) = witness(&a.pattern, &b.pattern) else {
                continue;
            };
            let Some(winner) = policy.lookup(&method, &path) else {
                continue;
            };
            let (win, lose) = if *winner.pattern == *a.text {
                (a, b)
            } else {
                (b, a)
            };
            if concrete_over_template(&win.pattern, &lose.pattern) {
                continue;
            }
            out.push(Lint {
                kind: "shadowed_route",
                message: format!(
                    "`{}` ({}) and `{}` ({}) both match e.g. `{method} {path}`; `{}` wins ({}), so those requests need `{}`",
                    a.text,
                    a.permission,
                    b.text,
                    b.permission,
                    win.text,
                    why(&win.pattern, &lose.pattern),
                    win.permission
                ),
            });
        }
    }
    for perm in granted {
        let reachable = specs.iter().filter(|s| s.permission == *perm).any(|s| {
            let (method, path) = instantiate(&s.pattern);
            policy
                .lookup(&method, &path)
                .is_some_and(|r| r.permission == *perm)
        });
        if !reachable {
            out.push(Lint {
                kind: "granted_never_matches",
                message: format!("permission `{perm}` is granted but every one of its routes is taken by another route"),
            });
        }
    }
    out
}

/// The winner is concrete where the loser is templated (`/user/starred` over `/user/{id}`),
/// and the loser is no catch-all: OpenAPI's own precedence rule, and how APIs are designed;
/// the overlap is only a parameter value colliding with a word, nothing to act on. A
/// catch-all (`{*rest}`) that loses ground stays reported: its grant is narrower than written.
fn concrete_over_template(win: &Pattern, lose: &Pattern) -> bool {
    if lose.segments.iter().any(|s| matches!(s, Segment::Rest(_))) {
        return false;
    }
    let first_difference = win
        .segments
        .iter()
        .zip(&lose.segments)
        .find(|(w, l)| match (w, l) {
            (Segment::Literal(x), Segment::Literal(y)) => x != y,
            (Segment::Param(_), Segment::Param(_)) => false,
            _ => true,
        });
    matches!(
        first_difference,
        Some((Segment::Literal(_), Segment::Param(_)))
    )
}

/// Same method and the same segments, parameter names aside.
fn same_shape(a: &Pattern, b: &Pattern) -> bool {
    a.method == b.method
        && a.segments.len() == b.segments.len()
        && a.segments.iter().zip(&b.segments).all(|pair| match pair {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            (Segment::Param(_), Segment::Param(_)) | (Segment::Rest(_), Segment::Rest(_)) => true,
            _ => false,
        })
}

fn why(win: &Pattern, lose: &Pattern) -> &'static str {
    let shape = |p: &Pattern| {
        p.segments
            .iter()
            .map(std::mem::discriminant)
            .collect::<Vec<_>>()
    };
    if shape(win) == shape(lose) && win.segments == lose.segments {
        if win.method.is_some() && lose.method.is_none() {
            "an exact method beats `*`"
        } else {
            "declared first"
        }
    } else {
        "more specific path: literal over {param} over {*rest}, left to right"
    }
}

/// A request both patterns match, if there is one.
fn witness(a: &Pattern, b: &Pattern) -> Option<(Method, String)> {
    let method = match (&a.method, &b.method) {
        (Some(x), Some(y)) if x != y => return None,
        (Some(m), _) | (_, Some(m)) => m.clone(),
        (None, None) => Method::GET,
    };
    let segs = unify(&a.segments, &b.segments)?;
    Some((method, format!("/{}", segs.join("/"))))
}

fn unify(a: &[Segment], b: &[Segment]) -> Option<Vec<String>> {
    match (a.split_first(), b.split_first()) {
        (None, None) => Some(Vec::new()),
        (Some((Segment::Rest(_), _)), _) => absorb(b),
        (_, Some((Segment::Rest(_), _))) => absorb(a),
        (Some((x, a_rest)), Some((y, b_rest))) => {
            let seg = match (x, y) {
                (Segment::Literal(l), Segment::Literal(m)) if l == m => l.clone(),
                (Segment::Literal(l), Segment::Param(_))
                | (Segment::Param(_), Segment::Literal(l))
                    if !l.is_empty() =>
                {
                    l.clone()
                }
                (Segment::Param(_), Segment::Param(_)) => "x".to_owned(),
                _ => return None,
            };
            let mut rest = unify(a_rest, b_rest)?;
            rest.insert(0, seg);
            Some(rest)
        }
        _ => None,
    }
}

/// A `{*rest}` takes one or more segments, the first non-empty: instantiate the other side.
fn absorb(other: &[Segment]) -> Option<Vec<String>> {
    let segs = instantiate_segments(other);
    segs.first().filter(|s| !s.is_empty())?;
    Some(segs)
}

fn instantiate_segments(segs: &[Segment]) -> Vec<String> {
    segs.iter()
        .map(|s| match s {
            Segment::Literal(l) => l.clone(),
            Segment::Param(_) | Segment::Rest(_) => "x".to_owned(),
        })
        .collect()
}

fn instantiate(p: &Pattern) -> (Method, String) {
    let method = p.method.clone().unwrap_or(Method::GET);
    (
        method,
        format!("/{}", instantiate_segments(&p.segments).join("/")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(routes: &[(&str, &str)]) -> Vec<RouteSpec> {
        routes
            .iter()
            .map(|(perm, text)| RouteSpec {
                permission: (*perm).into(),
                text: (*text).into(),
                pattern: Pattern::parse(text).unwrap(),
                websocket: false,
            })
            .collect()
    }

    fn run(routes: &[(&str, &str)], granted: &[&str]) -> Vec<Lint> {
        let s = specs(routes);
        let policy = Policy::new(s.clone(), |p| granted.contains(&p));
        let granted: Vec<std::sync::Arc<str>> = granted.iter().map(|g| (*g).into()).collect();
        lint(&policy, &s, &granted)
    }

    #[test]
    fn shadowing_names_the_winner() {
        let l = run(
            &[
                ("read", "GET /v1/sb/{id}/{*rest}"),
                ("exec", "GET /v1/sb/{id}/files/{*path}"),
            ],
            &["read"],
        );
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0].kind, "shadowed_route");
        assert!(
            l[0].message
                .contains("`GET /v1/sb/{id}/files/{*path}` wins (more specific"),
            "{}",
            l[0].message
        );
        assert!(
            l[0].message.contains("GET /v1/sb/x/files/x"),
            "{}",
            l[0].message
        );
    }

    /// OpenAPI's precedence (a concrete path over a templated one) is not a finding; a
    /// catch-all losing ground is.
    #[test]
    fn concrete_over_template_is_not_a_finding() {
        let quiet = [
            [
                ("users", "GET /user/{account_id}"),
                ("stars", "GET /user/starred"),
            ],
            [
                ("issues", "GET /r/issues/comments/{comment_id}"),
                ("reactions", "GET /r/issues/{issue_number}/reactions"),
            ],
        ];
        for routes in quiet {
            let granted: Vec<&str> = routes.iter().map(|(p, _)| *p).collect();
            let l = run(&routes, &granted);
            assert!(l.is_empty(), "{l:?}");
        }
        let l = run(
            &[
                ("read", "GET /user/{*rest}"),
                ("stars", "GET /user/starred"),
            ],
            &["read", "stars"],
        );
        assert_eq!(l.len(), 1, "{l:?}");
    }

    #[test]
    fn method_star_and_duplicates() {
        let l = run(&[("a", "* /v1/x"), ("b", "GET /v1/x")], &["a"]);
        assert!(l[0].message.contains("exact method beats"), "{l:?}");
        let l = run(
            &[("a", "GET /v1/{id}"), ("b", "GET /v1/{name}")],
            &["a", "b"],
        );
        assert_eq!(
            l.iter().map(|x| x.kind).collect::<Vec<_>>(),
            vec!["duplicate_route", "granted_never_matches"]
        );
        assert!(l[1].message.contains("`b`"));
    }

    #[test]
    fn disjoint_routes_are_clean() {
        let l = run(
            &[
                ("a", "GET /v1/x"),
                ("b", "POST /v1/x"),
                ("c", "GET /v1/x/{id}"),
                ("d", "GET /v2/{*r}"),
            ],
            &["a", "b", "c", "d"],
        );
        assert!(l.is_empty(), "{l:?}");
    }
}
