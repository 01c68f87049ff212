//! Drift between a catalogue and the API's OpenAPI description (`sidekey check --openapi`):
//! catalogue routes that match no operation (a typo, or a removed endpoint) and operations
//! that no route covers (a new endpoint nobody granted). Each side is decided by the same
//! route lookup the proxy uses, on a sample request built from the other side's template.

use http::Method;

use super::Route;
use crate::policy::lint::Lint;
use crate::policy::route::{Pattern, Segment};
use crate::policy::{Policy, RouteSpec};

/// A request `pattern` matches: each `{param}` as `sample`, `{*rest}` as two segments.
fn sample(pattern: &Pattern) -> (Method, String) {
    let mut path = String::new();
    for seg in &pattern.segments {
        path.push('/');
        match seg {
            Segment::Literal(l) => path.push_str(l),
            Segment::Param(_) => path.push_str("sample"),
            Segment::Rest(_) => path.push_str("sample/sample"),
        }
    }
    (pattern.method.clone().unwrap_or(Method::GET), path)
}

/// The two kinds of drift, as lints.
pub fn drift(catalogue: &[RouteSpec], spec: &[Route], spec_name: &str) -> Vec<Lint> {
    let ops: Vec<RouteSpec> = spec
        .iter()
        .filter_map(|r| {
            let text = format!("{} {}", r.method, r.template);
            Some(RouteSpec {
                permission: r
                    .operation_id
                    .clone()
                    .unwrap_or_else(|| text.clone())
                    .into(),
                pattern: Pattern::parse(&text).ok()?,
                text: text.into(),
                websocket: false,
            })
        })
        .collect();
    let by_ops = Policy::new(ops.clone(), |_| true);
    let by_catalogue = Policy::new(catalogue.to_vec(), |_| true);
    let mut out = Vec::new();
    for route in catalogue {
        let (method, path) = sample(&route.pattern);
        if by_ops.lookup(&method, &path).is_none() {
            out.push(Lint {
                kind: "openapi_unknown_route",
                message: format!(
                    "`{}` ({}) matches no operation in {spec_name}: a typo, or an endpoint the API removed",
                    route.text, route.permission
                ),
            });
        }
    }
    for op in &ops {
        let (method, path) = sample(&op.pattern);
        if by_catalogue.lookup(&method, &path).is_none() {
            out.push(Lint {
                kind: "openapi_uncovered_operation",
                message: format!(
                    "operation `{}` (`{}`) is in no permission of the catalogue: a new endpoint nobody granted",
                    op.permission, op.text
                ),
            });
        }
    }
    out
}
