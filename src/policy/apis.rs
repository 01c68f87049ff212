//! Several APIs behind one listener: which API a canonical path belongs to, by the longest
//! `path_prefix`, matched segment by segment (`/openai` matches `/openai` and `/openai/...`,
//! never `/openaix`). The prefix is removed and the rest is what that API's catalogue is
//! matched against and what is forwarded, byte for byte.
//!
//! Routing runs on the canonical path (after `canon`), so no encoding or dot segment can
//! move a request from one API's prefix to another's: `/openai/../banata` and `/openai%2F..`
//! are rejected before a prefix is looked at.

use std::borrow::Cow;
use std::sync::Arc;

use http::{Method, Uri};

use super::template::{PathTemplate, skip_any};
use super::{Policy, Verdict, screen};

/// Prefix -> API index, longest first; per API, the path templates of a `path` credential.
#[derive(Clone, Debug, Default)]
pub struct Router {
    entries: Vec<(Arc<str>, usize)>,
    templates: Vec<Option<Arc<[PathTemplate]>>>,
}

impl Router {
    /// `prefixes[i]` is API `i`'s prefix (`"/"` or `"/name"`); `None`: reached only on its
    /// own listener.
    pub fn new<'a>(prefixes: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut entries: Vec<(Arc<str>, usize)> = prefixes
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|p| (Arc::from(p), i)))
            .collect();
        // Longest first; a stable sort keeps declaration order among equals (never two).
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Self {
            entries,
            templates: Vec::new(),
        }
    }

    /// `templates[i]`: API `i` takes its key in the path; a client's placeholder copy of one
    /// of these templates is dropped before the allow-list matches.
    pub fn with_templates(mut self, templates: Vec<Option<Arc<[PathTemplate]>>>) -> Self {
        self.templates = templates;
        self
    }

    /// After the prefix: where the checked path starts once a placeholder template is
    /// dropped, and which template it was (0 when the client sent none).
    fn skip_template(&self, api: usize, path: &str, at: usize) -> (usize, usize) {
        let found = self
            .templates
            .get(api)
            .and_then(Option::as_deref)
            .zip(path.get(at..))
            .and_then(|(ts, rest)| skip_any(ts, rest));
        match found {
            Some((index, skipped)) => (at + skipped, index),
            None => (at, 0),
        }
    }

    /// The API `path` (canonical) belongs to, and where the rest of the path starts.
    /// `only`: a request on API `i`'s own listener goes to that API only.
    pub fn route(&self, path: &str, only: Option<(usize, Option<&str>)>) -> Option<(usize, usize)> {
        match only {
            Some((api, None)) => Some((api, 0)),
            Some((api, Some(prefix))) => strip(path, prefix).map(|at| (api, at)),
            None => self
                .entries
                .iter()
                .find_map(|(prefix, api)| strip(path, prefix).map(|at| (*api, at))),
        }
    }
}

/// Where the rest of `path` starts when it lies under `prefix` (segment-wise), else `None`.
/// `path == prefix` leaves an empty rest, forwarded as `/`.
fn strip(path: &str, prefix: &str) -> Option<usize> {
    if prefix == "/" {
        return Some(0);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
}

/// The decision for one request across APIs: which API (if any) and its verdict.
#[derive(Debug)]
pub struct Decision<'p, 'u> {
    pub api: Option<usize>,
    pub verdict: Verdict<'p, 'u>,
    /// The rest of the path is the whole inbound path (no prefix removed), so the inbound
    /// bytes can be forwarded as they are when canonical.
    pub whole_path: bool,
    /// The path template the client used (`path` credentials; 0 when none).
    pub template: usize,
}

/// Screens and canonicalises the whole path, picks the API, removes its prefix and matches
/// the rest against that API's policy (`policies[api]`). `run` and `explain` both call it.
pub fn decide<'p, 'u>(
    router: &Router,
    policies: &'p [Arc<Policy>],
    only: Option<(usize, Option<&str>)>,
    method: &Method,
    uri: &'u Uri,
) -> Decision<'p, 'u> {
    let refused = |verdict| Decision {
        api: None,
        verdict,
        whole_path: false,
        template: 0,
    };
    let path = match screen(method, uri) {
        Ok(p) => p,
        Err(verdict) => return refused(verdict),
    };
    let routed = router.route(&path, only);
    let Some((api, at, policy)) = routed.and_then(|(api, at)| Some((api, at, policies.get(api)?)))
    else {
        return refused(Verdict::NoRoute { path });
    };
    let (at, template) = router.skip_template(api, &path, at);
    let rest: Cow<'u, str> = match path {
        Cow::Borrowed(p) => Cow::Borrowed(p.get(at..).filter(|r| !r.is_empty()).unwrap_or("/")),
        Cow::Owned(p) => Cow::Owned(
            p.get(at..)
                .filter(|r| !r.is_empty())
                .unwrap_or("/")
                .to_owned(),
        ),
    };
    Decision {
        api: Some(api),
        verdict: policy.check(method, rest),
        whole_path: at == 0,
        template,
    }
}
