//! The forward-proxy listener (`HTTPS_PROXY`): programs that cannot be pointed at a base URL
//! reach `https://api.example` unchanged, and sidekey still holds them to that API's
//! allow-list and injects its key.
//!
//! One routing key: the CONNECT authority (`host:port`). It selects the API, names the only
//! leaf presented ([`intercept`]), and is the only value SNI and the inner `Host` may equal.
//! A configured API is always intercepted, never tunnelled blind; a host in `tunnel` is
//! passed blind ([`blind`], no key, no policy) when `unknown_hosts = "tunnel"`; anything
//! else is refused on the CONNECT itself, before any TLS. Absolute-form requests
//! (`http://api.example/...`) to a configured host are served with TLS origination. There is
//! no open proxy.

mod blind;
mod hosted;
mod intercept;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};

pub use hosted::HostUpstream;

use super::caller::Peer;
use super::{ProxyBody, ProxyError, Via, request_id};
use crate::config::{Config, UnknownHosts, api_key, normalise_host};
use crate::control::ca::{InterceptCa, LEAF_VALIDITY};
use crate::control::state::Shared;
use crate::serve::{RequestBody, Upgrade};
use crate::telemetry;

/// Blind tunnels open at once; beyond it, 503 `overloaded`.
const MAX_TUNNELS: usize = 256;

/// The forward proxy's state beside the snapshot: the CA and the leaves it signed.
pub struct Forward {
    shared: Arc<Shared>,
    ca: ArcSwap<InterceptCa>,
    /// By host: the TLS config presenting its leaf, and when it was minted. Bounded by the
    /// configured hosts (a leaf is only ever minted for one).
    leaves: ArcSwap<Leaves>,
    tunnels: Arc<AtomicUsize>,
    /// Clients for names a wildcard (`hosts`) intercepts, by API and host; built for the
    /// config they were made from.
    hosted: ArcSwap<hosted::Hosted>,
}

#[derive(Default)]
struct Leaves {
    /// Fingerprint of the CA that signed them.
    ca: String,
    by_host: HashMap<String, (Arc<rustls::ServerConfig>, Instant)>,
}

/// Where a CONNECT (or absolute-form) target goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// Intercept: this API (index into `Config::apis`).
    Intercept(usize),
    /// Pass blind (a `tunnel` host).
    Tunnel,
    /// 403 `host_not_allowed` with this reason.
    Deny(&'static str),
}

/// The routing decision for `host:port` (the host as the client wrote it).
pub fn route(config: &Config, host: &str, port: u16) -> Target {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Target::Deny("ip_literal");
    }
    let Some(host) = normalise_host(host) else {
        return Target::Deny("invalid_host");
    };
    let mut host_matched = false;
    for (i, api) in config.apis.iter().enumerate() {
        if let Some((h, p)) = api_key(api) {
            if h == host && p == port {
                return Target::Intercept(i);
            }
            host_matched |= h == host;
        }
    }
    // `hosts = ["*.SUFFIX"]`: one more label in front of the suffix, on the API's port.
    for (i, api) in config.apis.iter().enumerate() {
        let Some((_, p)) = api_key(api) else { continue };
        let wild = api.wildcard_hosts.iter().any(|suffix| {
            host.strip_suffix(suffix.as_str())
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.'))
        });
        if wild && p == port {
            return Target::Intercept(i);
        }
        host_matched |= wild;
    }
    if host_matched {
        return Target::Deny("port_not_allowed");
    }
    let Some(fp) = &config.forward_proxy else {
        return Target::Deny("host_not_configured");
    };
    if fp.unknown_hosts == UnknownHosts::Tunnel
        && fp.tunnel.iter().any(|(h, p)| *h == host && *p == port)
    {
        return Target::Tunnel;
    }
    Target::Deny("host_not_configured")
}

impl Forward {
    /// Writes `ca.crt` and `bundle.pem` into the configured `trust_dir` (write, then rename:
    /// a reader never sees half a file).
    pub fn write_trust(&self) -> Result<(), String> {
        let snap = self.shared.load();
        let Some(dir) = snap
            .config
            .forward_proxy
            .as_ref()
            .and_then(|f| f.trust_dir.clone())
        else {
            return Ok(());
        };
        let ca = self.ca.load();
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (name, text) in [
            ("ca.crt", ca.cert_pem().to_owned()),
            ("bundle.pem", crate::control::ca::bundle(ca.cert_pem())),
        ] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, dir.join(name)))
                .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))?;
        }
        Ok(())
    }

    pub fn new(shared: Arc<Shared>, ca: InterceptCa) -> Arc<Self> {
        metrics::gauge!(telemetry::CA_NOT_AFTER_SECONDS).set(ca.not_after as f64);
        warn_if_expiring(&ca);
        metrics::gauge!(telemetry::TUNNELS_ACTIVE).set(0.0);
        Arc::new(Self {
            shared,
            ca: ArcSwap::from_pointee(ca),
            leaves: ArcSwap::default(),
            tunnels: Arc::new(AtomicUsize::new(0)),
            hosted: ArcSwap::default(),
        })
    }

    /// A new CA (reloaded files): leaves are re-minted on their next use.
    pub fn set_ca(&self, ca: InterceptCa) {
        metrics::gauge!(telemetry::CA_NOT_AFTER_SECONDS).set(ca.not_after as f64);
        tracing::info!(fingerprint = &*ca.fingerprint, "interception CA loaded");
        warn_if_expiring(&ca);
        self.ca.store(Arc::new(ca));
        if let Err(e) = self.write_trust() {
            tracing::warn!(error = %e, "cannot write the trust files for the app");
        }
    }

    pub fn ca(&self) -> Arc<InterceptCa> {
        self.ca.load_full()
    }

    /// The TLS config for `host`: the current leaf, or a new one when there is none, it was
    /// signed by another CA, or two thirds of its validity are gone.
    fn leaf(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let ca = self.ca.load();
        let leaves = self.leaves.load();
        if leaves.ca == ca.fingerprint {
            if let Some((cfg, minted)) = leaves.by_host.get(host) {
                if minted.elapsed() < LEAF_VALIDITY * 2 / 3 {
                    return Ok(cfg.clone());
                }
            }
        }
        let cfg = ca.mint(host)?;
        let minted = Instant::now();
        self.leaves.rcu(|old| {
            let mut by_host = if old.ca == ca.fingerprint {
                old.by_host.clone()
            } else {
                HashMap::new()
            };
            by_host.insert(host.to_owned(), (cfg.clone(), minted));
            Leaves {
                ca: ca.fingerprint.clone(),
                by_host,
            }
        });
        Ok(cfg)
    }

    /// Re-reads the CA files every `interval` until `stop`; a bad update keeps the last good
    /// CA (and says so).
    pub async fn watch_ca(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut last_error: Option<String> = None;
        loop {
            let interval = self.shared.load().config.reload.interval;
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = crate::shutdown::stopped(&mut stop) => return,
            }
            let snap = self.shared.load();
            let Some(files) = snap
                .config
                .forward_proxy
                .as_ref()
                .and_then(|f| f.ca.clone())
            else {
                continue;
            };
            match InterceptCa::load(&files) {
                Ok(ca) if ca.digest == self.ca.load().digest => last_error = None,
                Ok(ca) => {
                    last_error = None;
                    self.set_ca(ca);
                }
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, "interception CA update refused; the last good CA keeps signing");
                        last_error = Some(e);
                    }
                }
            }
        }
    }
}

/// A warning while the CA has less than 30 days left (each load, so at least once a run).
fn warn_if_expiring(ca: &InterceptCa) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = ca.not_after.saturating_sub(now);
    if left < 30 * 24 * 3600 {
        tracing::warn!(
            fingerprint = &*ca.fingerprint,
            days_left = left / 86_400,
            "the interception CA expires soon: make a new one with `sidekey ca init` and roll the apps that trust it"
        );
    }
}

fn refuse(e: &ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    metrics::counter!(telemetry::ERRORS_TOTAL, "code" => e.code()).increment(1);
    e.to_response(request_id)
}

fn log_decision(host: &str, port: u16, decision: &'static str, reason: Option<&str>, status: u16) {
    metrics::counter!(telemetry::FORWARD_CONNECT_TOTAL, "decision" => decision).increment(1);
    tracing::info!(
        target: "sidekey::access",
        event = "connect",
        host,
        port,
        decision,
        reason,
        status,
    );
}

/// Serves one request on the forward listener: CONNECT or absolute-form.
pub async fn handle(
    fwd: Arc<Forward>,
    req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let request_id = request_id::from_headers(req.headers());
    // Gateway shape: the caller token in Proxy-Authorization names the caller for the whole
    // tunnel (it is stripped with every caller credential and never sent upstream).
    // One snapshot decides the CONNECT (or absolute-form) request.
    let snap = fwd.shared.load();
    // `sidekey exec`: only the child, which holds this run's session token, may use the proxy.
    let session = snap
        .config
        .forward_proxy
        .as_ref()
        .and_then(|f| f.session_token_sha256);
    if let Some(want) = session {
        use sha2::Digest as _;
        let held = super::caller::proxy_token(req.headers()).is_some_and(|t| {
            super::caller::constant_time_eq(&sha2::Sha256::digest(&t[..]).into(), &want)
        });
        if !held {
            let e = ProxyError::ProxyAuthRequired("session_token_required");
            return Ok(refuse(&e, &request_id));
        }
    }
    let caller = {
        if snap.config.gateway {
            let found = super::caller::proxy_token(req.headers())
                .ok_or(super::caller::Unidentified::Missing)
                .and_then(|t| super::caller::by_token(&snap.config, &t));
            match found.map(|i| snap.config.principals.get(i).map(|p| p.name.clone())) {
                Ok(Some(name)) => Some(name),
                Ok(None) => None,
                Err(why) => {
                    let e = ProxyError::ProxyAuthRequired(why.reason());
                    return Ok(refuse(&e, &request_id));
                }
            }
        } else {
            None
        }
    };
    if req.method() == Method::CONNECT {
        return Ok(connect(fwd, snap, req, caller, &request_id).await);
    }
    if req.uri().scheme().is_some() {
        return Ok(absolute(fwd, snap, req, caller, &request_id).await);
    }
    let e = ProxyError::InvalidRequest("not_a_proxy_request");
    Ok(refuse(&e, &request_id))
}

async fn connect(
    fwd: Arc<Forward>,
    snap: Arc<crate::control::state::Snapshot>,
    req: Request<RequestBody>,
    caller: Option<Arc<str>>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((a.host().to_owned(), a.port_u16()?)))
    else {
        let e = ProxyError::InvalidRequest("connect_needs_host_and_port");
        return refuse(&e, request_id);
    };
    match route(&snap.config, &host, port) {
        Target::Deny(reason) => {
            log_decision(&host, port, "deny", Some(reason), 403);
            refuse(&ProxyError::HostNotAllowed(reason), request_id)
        }
        Target::Intercept(api) => {
            let Some(name) = snap.config.apis.get(api).map(|a| a.name.clone()) else {
                return refuse(
                    &ProxyError::HostNotAllowed("host_not_configured"),
                    request_id,
                );
            };
            log_decision(&host, port, "intercept", None, 200);
            let host = normalise_host(&host).unwrap_or(host);
            let timeout = snap.config.listener.header_read_timeout;
            let idle = snap.config.listener.idle_timeout;
            let peer = Peer {
                cert_names: None,
                proxy_caller: caller,
            };
            let upgrade = Upgrade::new(move |switched| {
                intercept::run(fwd, name, peer, (host, port), (timeout, idle), switched)
            });
            established(upgrade)
        }
        Target::Tunnel => {
            let limits = &snap.config.limits;
            let Some(slot) = crate::body::InFlightGuard::try_acquire(&fwd.tunnels, MAX_TUNNELS)
            else {
                return refuse(&ProxyError::Overloaded, request_id);
            };
            let host = normalise_host(&host).unwrap_or(host);
            match blind::dial(&host, port, Duration::from_secs(5)).await {
                Ok(stream) => {
                    log_decision(&host, port, "tunnel", None, 200);
                    let idle = limits.websocket_idle_timeout;
                    let upgrade = Upgrade::new(move |switched| {
                        blind::run(stream, host, port, idle, slot, switched)
                    });
                    established(upgrade)
                }
                Err(kind) => {
                    log_decision(&host, port, "tunnel", Some(kind.as_str()), 502);
                    refuse(&ProxyError::Upstream(kind), request_id)
                }
            }
        }
    }
}

/// `200 Connection Established`, then the upgrade runs on the socket.
fn established(upgrade: Upgrade) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::OK;
    resp.extensions_mut().insert(upgrade);
    resp
}

/// `GET http://api.example/path` (or `https://`, as axios sends it): the configured host's
/// pipeline with TLS origination; anything else 403.
async fn absolute(
    fwd: Arc<Forward>,
    snap: Arc<crate::control::state::Snapshot>,
    req: Request<RequestBody>,
    caller: Option<Arc<str>>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let uri = req.uri();
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return refuse(&ProxyError::InvalidRequest("invalid_target"), request_id);
    };
    let host = authority.host().to_owned();
    // No port: the API's own (the client asked for the host, sidekey speaks TLS to it).
    let api_port = normalise_host(&host).and_then(|h| {
        snap.config
            .apis
            .iter()
            .filter_map(api_key)
            .find(|(k, _)| *k == h)
            .map(|(_, p)| p)
    });
    let port = authority.port_u16().or(api_port).unwrap_or(match scheme {
        "http" => 80,
        _ => 443,
    });
    let api = match route(&snap.config, &host, port) {
        Target::Intercept(api) => api,
        Target::Tunnel => {
            log_decision(&host, port, "deny", Some("tunnel_needs_connect"), 403);
            return refuse(
                &ProxyError::HostNotAllowed("tunnel_needs_connect"),
                request_id,
            );
        }
        Target::Deny(reason) => {
            log_decision(&host, port, "deny", Some(reason), 403);
            return refuse(&ProxyError::HostNotAllowed(reason), request_id);
        }
    };
    let Some(api) = snap.config.apis.get(api) else {
        return refuse(
            &ProxyError::HostNotAllowed("host_not_configured"),
            request_id,
        );
    };
    log_decision(&host, port, "intercept", None, 200);
    let name = api.name.clone();
    let (mut parts, body) = req.into_parts();
    // The pipeline sees an origin-form request for the API's own host.
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri = Uri::from(pq);
    match HeaderValue::from_str(api.upstream.authority.as_str()) {
        Ok(h) => {
            parts.headers.insert(http::header::HOST, h);
        }
        Err(_) => return refuse(&ProxyError::InvalidRequest("invalid_host"), request_id),
    }
    let index = snap.config.apis.iter().position(|a| a.name == name);
    let own = normalise_host(&host)
        .zip(index)
        .and_then(|(h, i)| fwd.upstream_for(&snap.config, i, &h, port));
    if let Some(u) = own.map(HostUpstream) {
        parts.headers.insert(http::header::HOST, u.0.host().clone());
        parts.extensions.insert(u);
    }
    drop(snap);
    let shared = fwd.shared.clone();
    let req = Request::from_parts(parts, body);
    let peer = Peer {
        cert_names: None,
        proxy_caller: caller,
    };
    let Ok(resp) = super::handle(shared, peer, Via::Forward(name), req).await;
    resp
}

#[cfg(test)]
mod tests;
