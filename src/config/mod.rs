//! Configuration: `sidekey.toml` (+ an optional permission catalogue file) parsed into a
//! validated [`Config`] in one step. Every error names the file, the key path and the line,
//! so `sidekey check` output can be acted on without reading the source.

mod apis;
mod credential;
mod ctx;
mod forward;
mod gateway;
mod limits_shared;
mod mint;
mod raw;
mod sections;
mod sigv4;
mod validate;

use std::path::{Path, PathBuf};

pub use limits_shared::{OnError, SharedLimits};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::policy::RouteSpec;
pub use forward::{CaFiles, ForwardProxy, UnknownHosts, api_key, normalise_host};

/// A validated configuration. Built only by [`Config::load`].
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file this was read from.
    pub path: PathBuf,
    /// SHA-256 over every source text: equal digests mean nothing changed.
    pub digest: [u8; 32],
    pub listener: Listener,
    pub admin: Admin,
    /// The APIs sidekey fronts. The single-API shape (`[upstream]` + `[credential]`) is one
    /// API named `default` at `/`.
    pub apis: Vec<Api>,
    /// `[api.NAME]` tables were given: grants are qualified (`api/permission`).
    pub named_apis: bool,
    /// Every key source, by name: an API's own key is named after the API (`default` in the
    /// single-API shape); a caller's own key after the caller (`caller/api` with named APIs).
    pub credentials: Vec<NamedCredential>,
    /// Service shape: the one local service. Gateway shape: `gateway` (enforce).
    pub service: Service,
    /// Who may call, each with its own grants and key. Service shape: one principal that
    /// every (loopback) caller is; gateway shape: one per `[[caller]]`.
    pub principals: Vec<Principal>,
    /// `[[caller]]` entries were given: callers must identify themselves.
    pub gateway: bool,
    pub runtime: Runtime,
    pub reload: Reload,
    pub limits: Limits,
    /// `[[test]]` expectations, run by `sidekey check`.
    pub tests: Vec<PolicyTest>,
    /// `[forward_proxy]`: the `HTTPS_PROXY` listener.
    pub forward_proxy: Option<ForwardProxy>,
}

/// A named key source.
#[derive(Clone, Debug)]
pub struct NamedCredential {
    pub name: Arc<str>,
    /// The API this key is sent to (index into `Config::apis`): only ever its origin.
    pub api: usize,
    pub config: CredentialConfig,
}

/// One API: its origin, where it is reached locally, its catalogue.
#[derive(Clone, Debug)]
pub struct Api {
    /// `default` in the single-API shape; follows the caller-name rules (a metric label).
    pub name: Arc<str>,
    /// `/` or `/segment[/segment...]`; `None`: reached only on its own `listen` address.
    pub prefix: Option<Arc<str>>,
    /// Its own loopback listener (for SDKs that drop a base path).
    pub listen: Option<std::net::SocketAddr>,
    pub upstream: Upstream,
    /// Every catalogue route, by permission name then declaration order.
    pub catalogue: Vec<RouteSpec>,
    /// The catalogue file, when `permissions_file` names one.
    pub permissions_path: Option<PathBuf>,
    /// `verify = "GET /path"`: a rotated key is tried with this request before it is used.
    pub verify: Option<Verify>,
    /// `Host` names its own listener serves besides loopback ones (lower case, no port).
    pub allowed_hosts: Vec<String>,
    /// Take an echoed credential out of response headers (`scrub = "headers"`, the default).
    pub scrub_headers: bool,
    /// Also scan textual response bodies (`scrub = "bodies"`).
    pub scrub_bodies: bool,
    /// `hosts = ["*.SUFFIX"]`: the forward proxy also intercepts every `LABEL.SUFFIX` (one
    /// label) for this API and sends it there. Stored as the suffixes, lower case.
    pub wildcard_hosts: Vec<String>,
}

/// A bodiless GET or HEAD on one of the API's catalogue routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verify {
    pub method: http::Method,
    /// Origin-form target, as sent.
    pub target: http::uri::PathAndQuery,
}

/// One identity with its own grants and key.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: Arc<str>,
    pub identity: Identity,
    /// As written (qualified with named APIs), deduplicated.
    pub allow: Vec<Arc<str>>,
    /// `allow` resolved: (API index, permission).
    pub grants: Vec<(usize, Arc<str>)>,
    /// Per API (parallel to `Config::apis`): index into `Config::credentials`.
    pub credentials: Vec<Option<usize>>,
    pub rate: Option<Rate>,
    pub max_concurrent: Option<usize>,
}

/// How a caller proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// Service shape: whoever reaches the loopback listener.
    Local,
    /// A verified client certificate naming this URI SAN, DNS SAN or CN.
    ClientCert(String),
    /// `Authorization: Bearer <token>` whose SHA-256 is this.
    Token([u8; 32]),
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("Local"),
            Self::ClientCert(san) => write!(f, "ClientCert({san})"),
            // A hash, not the token; still no reason to print it.
            Self::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// One expected decision: `request = "METHOD TARGET"`, `expect = "allow|deny|reject"`.
#[derive(Clone, Debug)]
pub struct PolicyTest {
    /// Index into `Config::principals` (gateway: the test's `caller`).
    pub principal: usize,
    pub request: String,
    pub method: String,
    pub target: String,
    pub expect: Expect,
    pub line: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Allow,
    Deny,
    Reject,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Reject => "reject",
        }
    }
}

/// Whether denials are enforced or only reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Enforce,
    /// Requests the allow-list would deny are forwarded and logged as `would_deny`
    /// (ambiguous paths are still rejected).
    Report,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Report => "report",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Listener {
    pub address: std::net::SocketAddr,
    /// From the first byte of a request head to its end (slowloris guard).
    pub header_read_timeout: Duration,
    /// A keep-alive connection that carries no request for this long is closed.
    pub idle_timeout: Duration,
    /// `[listener.tls]`: serve HTTPS (required beyond loopback); hot-reloaded.
    pub tls: Option<ListenerTls>,
    /// `Host` names served besides loopback ones (lower case, without port).
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s accepted besides loopback ones (lower case).
    pub allowed_origins: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Require (or, with token callers, accept) client certificates signed by these CAs.
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Admin {
    pub address: std::net::SocketAddr,
    /// `GET /` serves the status page (default: on when the admin address is loopback).
    pub status_page: bool,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    /// `upstream.url` as written, for display.
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Extra trust roots from `ca_file`, added to the Mozilla roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub protocol: Protocol,
    pub allow_plaintext: bool,
    /// Dial here instead of resolving the URL's host; TLS is verified for the host.
    pub connect_to: Option<std::net::SocketAddr>,
    /// `sidekey exec` sets this variable to a placeholder (never the key).
    pub placeholder_env: Option<String>,
}

/// HTTP version(s) offered to the upstream (ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 when the upstream offers it, else HTTP/1.1.
    Auto,
    Http1,
    Http2,
}

/// A credential's validated config (scheme and parts) and a part's source live with the
/// credential code; these names are the config's view of them.
pub use crate::credential::{Source as CredentialSource, Spec as CredentialConfig};

/// The deployment's name and mode. Grants live on the principals (`principals[0]` in the
/// service shape).
#[derive(Clone, Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub mode: Mode,
}

#[derive(Clone, Debug)]
pub struct Runtime {
    pub workers: usize,
    pub shutdown_grace: Duration,
    pub shutdown_idle: Duration,
}

#[derive(Clone, Debug)]
pub struct Reload {
    pub interval: Duration,
    pub debounce: Duration,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests in flight at once; beyond it, 503 `overloaded` at once.
    pub max_in_flight: usize,
    /// Largest request body forwarded (bytes); `None` is unlimited.
    pub max_request_body: Option<u64>,
    /// Longest wait for the next body frame, in either direction.
    pub body_idle_timeout: Duration,
    /// A WebSocket tunnel with no byte either way for this long is closed.
    pub websocket_idle_timeout: Duration,
    /// A WebSocket tunnel is closed after this long, busy or not (`None`: no limit).
    pub websocket_max_duration: Option<Duration>,
    /// Open WebSocket tunnels at once; beyond it, 503 `overloaded`.
    pub max_websockets: usize,
    /// `[limits.shared]`: caller rates decided in Redis across replicas.
    pub shared: Option<SharedLimits>,
}

/// A configuration error: which file, which key, which line, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}{message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key_prefix(key))]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl Config {
    /// Reads, parses and validates `path` and the catalogue file it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        let raw: raw::RawConfig = parse(path, &text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut hasher = Sha256::new();
        hasher.update(text.as_bytes());
        let catalogue_file = validate::catalogue_file(path, &text, &raw)?;
        let catalogue = match &catalogue_file {
            Some(rel) => {
                let full = dir.join(rel);
                let cat_text = read(&full)?;
                hasher.update([0u8]);
                hasher.update(cat_text.as_bytes());
                let cat: raw::RawCatalogue = parse(&full, &cat_text)?;
                Some((full, cat_text, cat.permissions))
            }
            None => None,
        };
        let mut api_files = std::collections::BTreeMap::new();
        for (name, api) in &raw.api {
            if let Some(rel) = &api.get_ref().permissions_file {
                let full = dir.join(rel.get_ref());
                let cat_text = read(&full)?;
                hasher.update([0u8]);
                hasher.update(cat_text.as_bytes());
                let cat: raw::RawCatalogue = parse(&full, &cat_text)?;
                api_files.insert(name.clone(), (full, cat_text, cat.permissions));
            }
        }
        let ctx = ctx::Ctx {
            path,
            text: &text,
            dir,
        };
        let mut config = validate::validate(&ctx, raw, catalogue, api_files)?;
        config.digest = hasher.finalize().into();
        // A GitHub App's token endpoint is its API's origin.
        for named in &mut config.credentials {
            if let Some(api) = config.apis.get(named.api) {
                mint::bind_github(&mut named.config, &api.upstream);
            }
        }
        Ok(config)
    }

    /// A principal's compiled allow-list for one API: its catalogue, with the grants
    /// resolved. `run` (via the reload task), `check` and `explain` all build it here.
    pub fn compile_policy(&self, principal: &Principal, api: usize) -> crate::policy::Policy {
        let catalogue = self
            .apis
            .get(api)
            .map(|a| a.catalogue.clone())
            .unwrap_or_default();
        let grants = &principal.grants;
        crate::policy::Policy::new(catalogue, |p| {
            grants.iter().any(|(a, g)| *a == api && **g == *p)
        })
    }

    /// Every API's policy for one principal (parallel to `apis`).
    pub fn compile_policies(&self, principal: &Principal) -> Vec<Arc<crate::policy::Policy>> {
        (0..self.apis.len())
            .map(|i| Arc::new(self.compile_policy(principal, i)))
            .collect()
    }

    /// The prefix router over every API, with the path templates of each API's `path`
    /// credential (the first one configured for it: its own key, else a caller's).
    pub fn router(&self) -> crate::policy::apis::Router {
        let templates = (0..self.apis.len())
            .map(|i| {
                self.credentials
                    .iter()
                    .filter(|c| c.api == i)
                    .find_map(|c| c.config.scheme.templates().cloned())
            })
            .collect();
        crate::policy::apis::Router::new(self.apis.iter().map(|a| a.prefix.as_deref()))
            .with_templates(templates)
    }

    /// The name a permission is granted by: qualified with named APIs.
    pub fn qualified(&self, api: usize, permission: &str) -> String {
        match self.apis.get(api) {
            Some(a) if self.named_apis => format!("{}/{permission}", a.name),
            _ => permission.to_owned(),
        }
    }

    /// The principal named `name`.
    pub fn principal(&self, name: &str) -> Option<(usize, &Principal)> {
        self.principals
            .iter()
            .enumerate()
            .find(|(_, p)| &*p.name == name)
    }

    /// Files whose changes should trigger a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.apis.iter().filter_map(|a| a.permissions_path.clone()));
        for c in &self.credentials {
            files.extend(c.config.files().map(Path::to_path_buf));
        }
        if let Some(ca) = self.forward_proxy.as_ref().and_then(|f| f.ca.as_ref()) {
            files.push(ca.cert.clone());
            files.push(ca.key.clone());
        }
        if let Some(f) = self
            .limits
            .shared
            .as_ref()
            .and_then(|s| s.password_file.clone())
        {
            files.push(f);
        }
        if let Some(tls) = &self.listener.tls {
            files.push(tls.cert_file.clone());
            files.push(tls.key_file.clone());
            files.extend(tls.client_ca_file.clone());
        }
        files
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })
}

/// Deserialises TOML, keeping the failing key path and line.
fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(path, text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // toml's `Spanned` shows up in the path as a private field: not a key anyone wrote.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let key = if key == "." { String::new() } else { key };
        toml_error(path, text, &key, e.inner())
    })
}

fn toml_error(path: &Path, text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        line: e.span().map(|s| line_of(text, s.start)),
        key: key.to_owned(),
        message: e.message().trim().to_owned(),
    }
}

/// 1-based line number of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.bytes().filter(|&b| b == b'\n').count())
        + 1
}

#[cfg(test)]
mod tests;
