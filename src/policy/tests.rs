use super::*;

/// A compiled policy from `(permission, pattern)` pairs (shared with the property tests).
pub(super) fn policy(catalogue: &[(&str, &str)], allow: &[&str]) -> Policy {
    let specs = catalogue
        .iter()
        .map(|(perm, text)| RouteSpec {
            permission: (*perm).into(),
            text: (*text).into(),
            pattern: Pattern::parse(text).unwrap(),
            websocket: false,
        })
        .collect();
    Policy::new(specs, |p| allow.contains(&p))
}

#[derive(Debug, PartialEq)]
enum Want {
    Allow(&'static str, &'static str),
    Denied(&'static str),
    NoRoute,
    Method,
    Rejected(PathError),
}

struct Case {
    method: &'static str,
    target: &'static str,
    want: Want,
}

fn verdict(v: Verdict<'_, '_>) -> Want {
    // Leak the strings: this is test-only and keeps the table comparable.
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    match v {
        Verdict::Allow { route, path } => Want::Allow(leak(&route.permission), leak(&path)),
        Verdict::PermissionDenied { route, .. } => Want::Denied(leak(&route.permission)),
        Verdict::NoRoute { .. } => Want::NoRoute,
        Verdict::MethodNotAllowed => Want::Method,
        Verdict::Rejected(e) => Want::Rejected(e),
    }
}

#[test]
fn evaluate_table() {
    let p = policy(
        &[
            ("sandbox_sessions:create", "POST /v1/sandboxes"),
            ("sandbox_sessions:read", "GET /v1/sandboxes/{id}"),
            ("sandbox_sessions:read", "GET /v1/sandboxes/{id}/{*rest}"),
            ("sandbox_sessions:delete", "DELETE /v1/sandboxes/{id}"),
            ("sandbox_sessions:exec", "POST /v1/sandboxes/{id}/exec"),
        ],
        &["sandbox_sessions:create", "sandbox_sessions:read"],
    );
    use Want::*;
    let cases = [
        Case {
            method: "POST",
            target: "/v1/sandboxes",
            want: Allow("sandbox_sessions:create", "/v1/sandboxes"),
        },
        Case {
            method: "POST",
            target: "/v1/sandboxes?x=%2F",
            want: Allow("sandbox_sessions:create", "/v1/sandboxes"),
        },
        Case {
            method: "GET",
            target: "/v1/sandboxes/sb_1",
            want: Allow("sandbox_sessions:read", "/v1/sandboxes/sb_1"),
        },
        Case {
            method: "GET",
            target: "/v1/%73andboxes/sb_1/files/a",
            want: Allow("sandbox_sessions:read", "/v1/sandboxes/sb_1/files/a"),
        },
        Case {
            method: "DELETE",
            target: "/v1/sandboxes/sb_1",
            want: Denied("sandbox_sessions:delete"),
        },
        Case {
            method: "POST",
            target: "/v1/sandboxes/sb_1/exec",
            want: Denied("sandbox_sessions:exec"),
        },
        Case {
            method: "POST",
            target: "/v1/sandboxesX",
            want: NoRoute,
        },
        Case {
            method: "POST",
            target: "/v1/sandboxes/",
            want: NoRoute,
        },
        Case {
            method: "post",
            target: "/v1/sandboxes",
            want: NoRoute,
        },
        Case {
            method: "PUT",
            target: "/v1/sandboxes",
            want: NoRoute,
        },
        Case {
            method: "GET",
            target: "/V1/sandboxes/sb_1",
            want: NoRoute,
        },
        Case {
            method: "GET",
            target: "/http://169.254.169.254/",
            want: Rejected(PathError::EmptySegment),
        },
        Case {
            method: "GET",
            target: "/v1/sandboxes/sb_1/../../admin",
            want: Rejected(PathError::DotSegment),
        },
        Case {
            method: "GET",
            target: "/v1/sandboxes/sb_1%2F..%2Fx",
            want: Rejected(PathError::EncodedDelimiter),
        },
        Case {
            method: "GET",
            target: "http://evil.example/v1/sandboxes/sb_1",
            want: Rejected(PathError::NotOriginForm),
        },
        Case {
            method: "OPTIONS",
            target: "*",
            want: Rejected(PathError::NotOriginForm),
        },
        Case {
            method: "CONNECT",
            target: "/v1/sandboxes",
            want: Method,
        },
        Case {
            method: "TRACE",
            target: "/v1/sandboxes",
            want: Method,
        },
    ];
    for c in cases {
        let method = http::Method::from_bytes(c.method.as_bytes()).unwrap();
        let uri: Uri = c.target.parse().unwrap();
        assert_eq!(
            verdict(p.evaluate(&method, &uri)),
            c.want,
            "{} {}",
            c.method,
            c.target
        );
    }
}
