//! Property tests of the canonicaliser and matcher: random request targets (drawn from an
//! alphabet rich in separators, dots, escapes and non-ASCII) never panic, and every accepted
//! path is safe to authorise and forward.

use proptest::prelude::*;

use super::canon::canonicalize;
use super::*;

/// Path fragments that tend to hit the interesting rules.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%5C".to_owned()),
        Just("%25".to_owned()),
        Just("%3B".to_owned()),
        Just("%C0%AF".to_owned()),
        Just("%C3%A9".to_owned()),
        Just("%c3".to_owned()),
        Just("%41".to_owned()),
        Just("%7e".to_owned()),
        Just("%00".to_owned()),
        Just(";".to_owned()),
        Just("\\".to_owned()),
        Just("é".to_owned()),
        Just("v1".to_owned()),
        Just("sandboxes".to_owned()),
        Just("openai".to_owned()),
        Just("/openai".to_owned()),
        Just("/openai/".to_owned()),
        Just("%6Fpenai".to_owned()),
        "[a-zA-Z0-9_~-]{1,6}",
        "[\\x00-\\x7f]{1,3}",
        any::<char>().prop_map(String::from),
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
}

fn has_forbidden_escape(p: &str) -> bool {
    let upper = p.to_ascii_uppercase();
    ["%2F", "%5C", "%25", "%3B", "%2E"]
        .iter()
        .any(|e| upper.contains(e))
}

fn sample_policy() -> Policy {
    super::tests::policy(
        &[
            ("r", "GET /v1/sandboxes/{id}"),
            ("r", "GET /v1/sandboxes/{id}/{*rest}"),
            ("c", "POST /v1/sandboxes"),
            ("x", "* /v1/{*rest}"),
        ],
        &["r"],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn accepted_paths_are_canonical_and_safe(path in target()) {
        if let Ok(canonical) = canonicalize(&path) {
            // Fixed point: what was matched canonicalises to itself.
            let again = canonicalize(&canonical);
            prop_assert_eq!(again.as_deref(), Ok(&*canonical));
            prop_assert!(canonical.starts_with('/'));
            prop_assert!(!canonical.contains("//"), "{}", canonical);
            prop_assert!(!has_forbidden_escape(&canonical), "{}", canonical);
            prop_assert!(canonical.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            for seg in canonical.split('/') {
                prop_assert!(seg != "." && seg != "..", "{}", canonical);
            }
        }
    }

    #[test]
    fn evaluate_never_panics_and_forwards_what_it_matched(path in target(), m in prop_oneof![Just("GET"), Just("POST"), Just("get"), Just("DELETE")]) {
        let policy = sample_policy();
        let method = http::Method::from_bytes(m.as_bytes()).unwrap();
        // Targets that http itself refuses never reach us; skip them.
        if let Ok(uri) = path.parse::<http::Uri>() {
            match policy.evaluate(&method, &uri) {
                Verdict::Allow { route, path: forwarded } => {
                    prop_assert!(route.granted);
                    let canonical = canonicalize(uri.path()).unwrap();
                    prop_assert_eq!(&*forwarded, &*canonical);
                    let again = policy.lookup(&method, &forwarded).map(|r| &*r.pattern);
                    prop_assert_eq!(again, Some(&*route.pattern));
                }
                Verdict::PermissionDenied { route, .. } => prop_assert!(!route.granted),
                Verdict::NoRoute { .. } | Verdict::MethodNotAllowed | Verdict::Rejected(_) => {}
            }
        }
    }

    /// Key isolation at the routing step: a request reaches API X only when its canonical
    /// path lies under X's prefix, segment-wise, and what is matched (and forwarded) is that
    /// path with the prefix removed.
    #[test]
    fn routing_stays_under_the_chosen_prefix(path in target()) {
        let prefixes = [Some("/"), Some("/openai"), Some("/openai/v2"), None];
        let router = apis::Router::new(prefixes);
        let everything = || Arc::new(super::tests::policy(&[("all", "* /{*rest}"), ("root", "* /")], &["all", "root"]));
        let policies = [everything(), everything(), everything(), everything()];
        if let Ok(uri) = path.parse::<http::Uri>() {
            let d = apis::decide(&router, &policies, None, &http::Method::GET, &uri);
            let Ok(canonical) = canonicalize(uri.path()) else {
                prop_assert!(d.api.is_none());
                return Ok(());
            };
            prop_assert_ne!(d.api, Some(3), "an API without a prefix is reached only on its listener");
            if let (Some(api), Verdict::Allow { path: forwarded, .. }) = (d.api, &d.verdict) {
                let prefix = prefixes[api].unwrap();
                let under = |p: &str| p == "/" || canonical == p || canonical.starts_with(&format!("{p}/"));
                prop_assert!(under(prefix), "{} routed to {}", canonical, prefix);
                // The longest prefix wins.
                for p in prefixes.iter().flatten() {
                    if under(p) {
                        prop_assert!(p.len() <= prefix.len(), "{} under {} but routed to {}", canonical, p, prefix);
                    }
                }
                let rest = if prefix == "/" { &canonical[..] } else { &canonical[prefix.len()..] };
                let rest = if rest.is_empty() { "/" } else { rest };
                prop_assert_eq!(&**forwarded, rest);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(s in "\\PC{0,64}") {
        let _ = canonicalize(&s);
        let _ = canonicalize(&format!("/{s}"));
    }
}
