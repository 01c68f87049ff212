//! Fuzzes the request-target path: bytes -> http::Uri (as hyper parses it) -> the policy's
//! screen, canonicaliser and matcher. Asserts never-panic and the forwarding invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey::policy::canon::canonicalize;
use sidekey::policy::{Pattern, Policy, RouteSpec, Verdict};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(canonical) = canonicalize(text) {
        assert_eq!(canonicalize(&canonical).as_deref(), Ok(&*canonical));
        assert!(!canonical.contains("//"));
        assert!(canonical.split('/').all(|s| s != "." && s != ".."));
    }
    let Ok(uri) = text.parse::<http::Uri>() else { return };
    let specs = ["GET /v1/sandboxes/{id}/{*rest}", "POST /v1/sandboxes", "* /v1/{*rest}"]
        .iter()
        .filter_map(|t| Some(RouteSpec { permission: "p".into(), text: (*t).into(), pattern: Pattern::parse(t).ok()? }))
        .collect();
    let policy = Policy::new(specs, |_| true);
    if let Verdict::Allow { path, .. } = policy.evaluate(&http::Method::GET, &uri) {
        assert_eq!(canonicalize(uri.path()).as_deref(), Ok(&*path));
    }
});
