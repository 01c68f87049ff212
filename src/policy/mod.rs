//! The allow-list: pure functions, no I/O.
//!
//! `Policy::evaluate` makes the whole decision the proxy acts on, in the order of the
//! security contract: method screen, request-target form, path canonicalisation, then the
//! route lookup and the grant check. `sidekey explain` calls the same function, so what it
//! prints is what `run` does. Grants are resolved when the policy is compiled: a lookup is a
//! trie walk plus one boolean.

pub mod apis;
pub mod canon;
pub mod lint;
pub mod route;
pub mod template;

use std::borrow::Cow;
use std::sync::Arc;

use http::{Method, Uri};

pub use canon::PathError;
pub use route::{Pattern, PatternError};
use route::{RouteId, Trie};

/// One catalogue route, as compiled for one service.
#[derive(Debug)]
pub struct Route {
    /// The permission the catalogue files this route under.
    pub permission: Arc<str>,
    /// The pattern as written (`GET /v1/sandboxes/{id}`).
    pub pattern: Arc<str>,
    /// Whether the service's `allow` list grants `permission`.
    pub granted: bool,
    /// Position of `permission` in [`Policy::permissions`] (for per-permission tables).
    pub permission_index: usize,
    /// The route accepts a WebSocket handshake (`websocket = true` in the catalogue).
    pub websocket: bool,
}

/// A catalogue entry handed to [`Policy::new`].
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub permission: Arc<str>,
    pub text: Arc<str>,
    pub pattern: Pattern,
    /// Opted in to WebSocket upgrades.
    pub websocket: bool,
}

/// The compiled allow-list of one service.
#[derive(Debug)]
pub struct Policy {
    routes: Vec<Route>,
    trie: Trie,
    permissions: Vec<Arc<str>>,
}

/// The outcome of screening and matching one request.
#[derive(Debug)]
pub enum Verdict<'p, 'u> {
    /// Forward `path` (canonical) plus the raw query; `route` is what allowed it.
    Allow {
        route: &'p Route,
        path: Cow<'u, str>,
    },
    /// A catalogue route matched, but its permission is not granted.
    PermissionDenied {
        route: &'p Route,
        path: Cow<'u, str>,
    },
    /// No catalogue route matches method + path.
    NoRoute { path: Cow<'u, str> },
    /// The method is never proxied (CONNECT, TRACE).
    MethodNotAllowed,
    /// The request target is ambiguous or malformed.
    Rejected(PathError),
}

impl Verdict<'_, '_> {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

impl Policy {
    /// Compiles routes; `granted` says which permissions the service holds.
    pub fn new(specs: Vec<RouteSpec>, granted: impl Fn(&str) -> bool) -> Self {
        let mut trie = Trie::default();
        let mut routes = Vec::with_capacity(specs.len());
        let mut permissions: Vec<Arc<str>> = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            // Route counts come from a config file; u32 is far beyond any real catalogue.
            let id = RouteId::try_from(i).unwrap_or(RouteId::MAX);
            trie.insert(&spec.pattern, id);
            let permission_index = match permissions.iter().position(|p| *p == spec.permission) {
                Some(i) => i,
                None => {
                    permissions.push(spec.permission.clone());
                    permissions.len() - 1
                }
            };
            routes.push(Route {
                granted: granted(&spec.permission),
                permission: spec.permission,
                pattern: spec.text,
                permission_index,
                websocket: spec.websocket,
            });
        }
        Self {
            routes,
            trie,
            permissions,
        }
    }

    /// Distinct permission names of the catalogue, in first-seen order.
    pub fn permissions(&self) -> &[Arc<str>] {
        &self.permissions
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Route lookup on an already canonical path.
    pub fn lookup(&self, method: &Method, canonical_path: &str) -> Option<&Route> {
        let id = self.trie.lookup(method, canonical_path)?;
        self.routes.get(usize::try_from(id).ok()?)
    }

    /// The full decision for one request on a single-API table (tests, benches).
    pub fn evaluate<'p, 'u>(&'p self, method: &Method, uri: &'u Uri) -> Verdict<'p, 'u> {
        match screen(method, uri) {
            Ok(path) => self.check(method, path),
            Err(v) => v,
        }
    }

    /// Route lookup and grant check on a canonical path (after [`screen`] and routing).
    pub fn check<'p, 'u>(&'p self, method: &Method, path: Cow<'u, str>) -> Verdict<'p, 'u> {
        match self.lookup(method, &path) {
            Some(route) if route.granted => Verdict::Allow { route, path },
            Some(route) => Verdict::PermissionDenied { route, path },
            None => Verdict::NoRoute { path },
        }
    }
}

/// Method screen, request-target form and path canonicalisation: the canonical path, or the
/// refusal. Runs before any API is chosen.
pub fn screen<'u>(method: &Method, uri: &'u Uri) -> Result<Cow<'u, str>, Verdict<'static, 'u>> {
    // CONNECT would open a tunnel and TRACE would echo headers back: never proxied.
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(Verdict::MethodNotAllowed);
    }
    // Only origin-form: an absolute-form target would let the caller pick a host.
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(Verdict::Rejected(PathError::NotOriginForm));
    }
    let path = canon::canonicalize(uri.path()).map_err(Verdict::Rejected)?;
    if let Some(q) = uri.query() {
        canon::check_query(q).map_err(Verdict::Rejected)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
