//! Listeners without caller authentication serve this machine's own callers only, never a
//! web page. A page on a name that re-resolves to 127.0.0.1 (DNS rebinding) reaches a local
//! listener as a same-origin request: its `Host` names the page's domain, so only a `Host`
//! that names loopback (`localhost`, `*.localhost`, 127.0.0.0/8, `[::1]`, any port) or is
//! listed in `allowed_hosts` is served. What a browser adds on a page's behalf is refused
//! too: an `Origin` that is neither loopback nor listed in `listener.allowed_origins`, a
//! `Sec-Fetch-Site` of `cross-site` or `same-site` without such an `Origin`, and every CORS
//! preflight (never answered with `Access-Control-Allow-*`). Listeners with caller
//! authentication (gateway TLS, caller tokens) are not screened here.

use std::net::{IpAddr, Ipv6Addr};

use http::{HeaderMap, Method, Uri};

use super::ProxyError;

/// Whether `host` (`name[:port]`, `[v6]:port`) names this machine. Runs per request: no
/// allocation, case-insensitive comparisons.
pub fn is_loopback_host(host: &str) -> bool {
    let name = host_name(host);
    let tail = name
        .len()
        .checked_sub(".localhost".len())
        .and_then(|i| name.get(i..));
    if name.eq_ignore_ascii_case("localhost")
        || tail.is_some_and(|t| t.eq_ignore_ascii_case(".localhost"))
    {
        return true;
    }
    match name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => ip == Ipv6Addr::LOCALHOST,
        Err(_) => false,
    }
}

/// `host` without its port (`[::1]:8080` -> `[::1]`), as written (compare ignoring case).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => host.get(..=end).unwrap_or(host),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `scheme://host[:port]` of this machine, or listed (the lists are lower case).
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    match origin.split_once("://") {
        Some((scheme, host))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            is_loopback_host(host)
        }
        _ => false,
    }
}

/// The browser checks, for every listener without caller authentication.
pub fn browser(
    method: &Method,
    headers: &HeaderMap,
    allowed_origins: &[String],
) -> Result<(), ProxyError> {
    if method == Method::OPTIONS && headers.contains_key("access-control-request-method") {
        return Err(ProxyError::BrowserRefused("cors_preflight"));
    }
    let origin = headers
        .get(http::header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("invalid"));
    let origin_ok = match origin {
        Some(o) => origin_allowed(o, allowed_origins),
        None => false,
    };
    if origin.is_some() && !origin_ok {
        return Err(ProxyError::BrowserRefused("foreign_origin"));
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(site, Some("cross-site" | "same-site")) && !origin_ok {
        return Err(ProxyError::BrowserRefused("cross_site"));
    }
    Ok(())
}

/// The `Host` check, for a listener without caller authentication: `Host`, else the
/// target's authority (HTTP/2's `:authority`). An HTTP/1.1 absolute-form target is refused
/// later by the path screen whatever its authority.
pub fn host(uri: &Uri, headers: &HeaderMap, allowed_hosts: &[String]) -> Result<(), ProxyError> {
    let host = match (headers.get(http::header::HOST), uri.authority()) {
        (Some(h), _) => h.to_str().map_err(|_| ProxyError::HostNotLocal)?,
        (None, Some(a)) => a.as_str(),
        // HTTP/1.0 without Host: no name a page could have chosen.
        (None, None) => return Ok(()),
    };
    let name = host_name(host);
    if is_loopback_host(host) || allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(name)) {
        return Ok(());
    }
    Err(ProxyError::HostNotLocal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "app.localhost",
            "127.0.0.1",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "128.0.0.1",
            "[::2]:80",
            "0.0.0.0",
            "127.0.0.1.nip.io",
            "evil.test:8080",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn browser_rules() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        let listed = vec!["https://tools.internal".to_owned()];
        assert!(browser(&Method::GET, &h(&[]), &[]).is_ok());
        assert!(
            browser(
                &Method::GET,
                &h(&[("origin", "http://localhost:3000")]),
                &[]
            )
            .is_ok()
        );
        assert!(
            browser(
                &Method::POST,
                &h(&[("origin", "https://tools.internal")]),
                &listed
            )
            .is_ok()
        );
        assert!(browser(&Method::GET, &h(&[("sec-fetch-site", "same-origin")]), &[]).is_ok());
        assert!(browser(&Method::GET, &h(&[("sec-fetch-site", "none")]), &[]).is_ok());
        assert_eq!(
            browser(&Method::GET, &h(&[("origin", "https://evil.example")]), &[]),
            Err(ProxyError::BrowserRefused("foreign_origin"))
        );
        assert_eq!(
            browser(&Method::GET, &h(&[("origin", "null")]), &[]),
            Err(ProxyError::BrowserRefused("foreign_origin"))
        );
        assert_eq!(
            browser(&Method::GET, &h(&[("sec-fetch-site", "cross-site")]), &[]),
            Err(ProxyError::BrowserRefused("cross_site"))
        );
        assert_eq!(
            browser(&Method::GET, &h(&[("sec-fetch-site", "same-site")]), &[]),
            Err(ProxyError::BrowserRefused("cross_site"))
        );
        assert_eq!(
            browser(
                &Method::OPTIONS,
                &h(&[
                    ("origin", "http://localhost"),
                    ("access-control-request-method", "POST")
                ]),
                &[]
            ),
            Err(ProxyError::BrowserRefused("cors_preflight"))
        );
    }

    #[test]
    fn host_rules() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert("host", v.parse().unwrap());
            m
        };
        let origin_form: Uri = "/v1/x".parse().unwrap();
        let listed = vec!["app.internal".to_owned()];
        assert!(host(&origin_form, &h("127.0.0.1:8080"), &[]).is_ok());
        assert!(host(&origin_form, &h("App.Internal:8080"), &listed).is_ok());
        assert_eq!(
            host(&origin_form, &h("evil.test:8080"), &listed),
            Err(ProxyError::HostNotLocal)
        );
        let h2: Uri = "http://evil.test/v1/x".parse().unwrap();
        assert_eq!(
            host(&h2, &HeaderMap::new(), &[]),
            Err(ProxyError::HostNotLocal)
        );
        let h2: Uri = "http://127.0.0.1:8080/v1/x".parse().unwrap();
        assert!(host(&h2, &HeaderMap::new(), &[]).is_ok());
    }
}
