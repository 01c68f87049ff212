//! `[forward_proxy]`: the `HTTPS_PROXY` listener. Its routing key is the CONNECT authority,
//! which must be a configured API's `host:port` (intercepted), a `tunnel` host (passed blind,
//! when `unknown_hosts = "tunnel"`), or nothing (403).

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Spanned;

use super::ctx::{Ctx, address};
use super::raw::RawForwardProxy;
use super::{Api, ConfigError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardProxy {
    pub address: SocketAddr,
    /// The interception CA (`sidekey ca init`); `None` only for `sidekey exec`, which mints an
    /// ephemeral one.
    pub ca: Option<CaFiles>,
    pub unknown_hosts: UnknownHosts,
    /// Exact `host:port` names tunnelled blind (no key, no policy).
    pub tunnel: Vec<(String, u16)>,
    /// Where `ca.crt` and `bundle.pem` are written for the app to trust (a shared volume).
    pub trust_dir: Option<PathBuf>,
    /// `sidekey exec` only (never from a file): SHA-256 of the run's session token, which
    /// every proxy request must carry in `Proxy-Authorization`.
    pub session_token_sha256: Option<[u8; 32]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownHosts {
    Deny,
    Tunnel,
}

/// A host name as a routing key: ASCII lower case, one trailing dot dropped. `None` for IP
/// literals and anything that is not a plain DNS name.
pub fn normalise_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let dns = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && host.parse::<std::net::IpAddr>().is_err()
        // `1.2.3` or `0x7f.1`: numeric forms some resolvers read as addresses.
        && !host
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    dns.then_some(host)
}

/// `host[:port]` with the port defaulting to 443.
fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (text, 443),
    };
    Some((normalise_host(host)?, port))
}

/// An API's routing key on the forward proxy: its URL's host and port.
pub fn api_key(api: &Api) -> Option<(String, u16)> {
    let authority = &api.upstream.authority;
    let port = authority
        .port_u16()
        .unwrap_or(if api.upstream.scheme == http::uri::Scheme::HTTP {
            80
        } else {
            443
        });
    Some((normalise_host(authority.host())?, port))
}

pub(super) fn forward_proxy(
    ctx: &Ctx<'_>,
    raw: Option<&Spanned<RawForwardProxy>>,
    apis: &[Api],
) -> Result<Option<ForwardProxy>, ConfigError> {
    let Some(spanned) = raw else {
        return Ok(None);
    };
    // Gateway callers identify with a caller token in Proxy-Authorization; certificate
    // callers cannot (the forward listener is plain HTTP on loopback).
    let raw = spanned.get_ref();
    let address = address(
        ctx,
        "forward_proxy.address",
        raw.address.as_ref(),
        "127.0.0.1:3128",
    )?;
    if !address.ip().is_loopback() {
        return ctx.err(
            "forward_proxy.address",
            raw.address.as_ref().map(Spanned::span),
            "the forward proxy must be bound to a loopback address: it has no caller authentication",
        );
    }
    let ca = match (&raw.ca_cert_file, &raw.ca_key_file) {
        (Some(c), Some(k)) => Some(CaFiles {
            cert: ctx.dir.join(c.get_ref()),
            key: ctx.dir.join(k.get_ref()),
        }),
        (None, None) => None,
        (Some(c), None) => {
            return ctx.err(
                "forward_proxy.ca_key_file",
                Some(c.span()),
                "required with ca_cert_file",
            );
        }
        (None, Some(k)) => {
            return ctx.err(
                "forward_proxy.ca_cert_file",
                Some(k.span()),
                "required with ca_key_file",
            );
        }
    };
    let unknown_hosts = match raw.unknown_hosts.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("deny") => UnknownHosts::Deny,
        Some("tunnel") => UnknownHosts::Tunnel,
        Some(other) => {
            return ctx.err(
                "forward_proxy.unknown_hosts",
                raw.unknown_hosts.as_ref().map(Spanned::span),
                format!("`{other}` is not one of deny, tunnel"),
            );
        }
    };
    let keys: Vec<(String, u16)> = apis.iter().filter_map(api_key).collect();
    let mut tunnel = Vec::new();
    for (i, entry) in raw.tunnel.iter().enumerate() {
        let key = format!("forward_proxy.tunnel[{i}]");
        let Some(hp) = host_port(entry.get_ref()) else {
            return ctx.err(
                &key,
                Some(entry.span()),
                "must be an exact host name (no IP literal, no wildcard), optionally with :port",
            );
        };
        if keys.iter().any(|(h, _)| *h == hp.0) {
            return ctx.err(
                &key,
                Some(entry.span()),
                "is a configured API's host: an API is always intercepted, never tunnelled blind",
            );
        }
        tunnel.push(hp);
    }
    if !tunnel.is_empty() && unknown_hosts == UnknownHosts::Deny {
        return ctx.err(
            "forward_proxy.tunnel",
            raw.tunnel.first().map(Spanned::span),
            "has no effect unless unknown_hosts = \"tunnel\"",
        );
    }
    for api in apis {
        if api_key(api).is_none() {
            return ctx.err(
                &format!("api.{}.url", api.name),
                None,
                "the forward proxy routes by host name: an API behind it needs a DNS name, not an IP address",
            );
        }
    }
    Ok(Some(ForwardProxy {
        address,
        ca,
        unknown_hosts,
        tunnel,
        trust_dir: raw.trust_dir.as_ref().map(|d| ctx.dir.join(d.get_ref())),
        session_token_sha256: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_as_routing_keys() {
        assert_eq!(
            normalise_host("API.OpenAI.com."),
            Some("api.openai.com".into())
        );
        for bad in [
            "127.0.0.1",
            "::1",
            "1.2.3",
            "a..b",
            "-a.com",
            "a_b.com",
            "",
            "x.com:443",
            "*.x.com",
            "0x7f.1",
        ] {
            assert_eq!(normalise_host(bad), None, "{bad}");
        }
        assert_eq!(host_port("pypi.org"), Some(("pypi.org".into(), 443)));
        assert_eq!(host_port("pypi.org:8443"), Some(("pypi.org".into(), 8443)));
        assert_eq!(host_port("10.0.0.1:443"), None);
    }
}
