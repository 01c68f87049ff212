//! Redirects and pagination stay behind sidekey: URLs on the API's own origin in
//! `Location`, `Content-Location` and `Link` response headers are rewritten to the address
//! the client used plus the API's prefix, so a client following them comes back through
//! sidekey (and its allow-list) instead of calling the origin without a key. URLs on other
//! origins pass unchanged. Bodies are never rewritten.

use http::header::{self, HeaderMap, HeaderValue};

/// Rewrites the link headers of one response. `origin` is `https://host[:port]` of the API;
/// `local` is what replaces it (`http://127.0.0.1:8080/github`, no trailing `/`).
pub(crate) fn rewrite(headers: &mut HeaderMap, origin: &str, local: &str) {
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(v) = headers.get(&name).and_then(|v| v.to_str().ok()) {
            if let Some(new) = rebase(v, origin, local) {
                if let Ok(value) = HeaderValue::from_str(&new) {
                    headers.insert(name, value);
                }
            }
        }
    }
    if !headers.contains_key(header::LINK) {
        return;
    }
    let links: Vec<HeaderValue> = headers
        .get_all(header::LINK)
        .iter()
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|text| rewrite_link(text, origin, local))
                .and_then(|t| HeaderValue::from_str(&t).ok())
                .unwrap_or_else(|| v.clone())
        })
        .collect();
    headers.remove(header::LINK);
    for v in links {
        headers.append(header::LINK, v);
    }
}

/// `url` with `origin` replaced by `local`, when `url` is on that origin.
fn rebase(url: &str, origin: &str, local: &str) -> Option<String> {
    let head = url.get(..origin.len())?;
    if !head.eq_ignore_ascii_case(origin) {
        return None;
    }
    let rest = url.get(origin.len()..)?;
    if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        return None; // `https://api.example.com.evil/...` or another port
    }
    Some(format!("{local}{rest}"))
}

/// RFC 8288 `Link`: `<url>; params, <url>; params`. Only the `<...>` targets change.
fn rewrite_link(text: &str, origin: &str, local: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let close = open + rest.get(open..)?.find('>')?;
        out.push_str(rest.get(..=open)?);
        let url = rest.get(open + 1..close)?;
        match rebase(url, origin, local) {
            Some(new) => {
                out.push_str(&new);
                changed = true;
            }
            None => out.push_str(url),
        }
        rest = rest.get(close..)?;
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "https://api.github.com";
    const LOCAL: &str = "http://127.0.0.1:8080/github";

    #[test]
    fn own_origin_is_rebased_other_origins_pass() {
        let cases = [
            (
                "https://api.github.com/repos/o/r",
                Some("http://127.0.0.1:8080/github/repos/o/r"),
            ),
            (
                "https://API.GITHUB.COM/x?y=1",
                Some("http://127.0.0.1:8080/github/x?y=1"),
            ),
            (
                "https://api.github.com",
                Some("http://127.0.0.1:8080/github"),
            ),
            ("https://api.github.com.evil/x", None),
            ("https://api.github.com:8443/x", None),
            ("https://uploads.github.com/x", None),
            ("/relative/path", None),
        ];
        for (url, want) in cases {
            assert_eq!(rebase(url, ORIGIN, LOCAL).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn link_header_targets_are_rewritten() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "<https://api.github.com/repos/o/r/issues?page=2>; rel=\"next\", <https://other.example/x>; rel=\"help\"",
            ),
        );
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("https://api.github.com/a"),
        );
        rewrite(&mut h, ORIGIN, LOCAL);
        assert_eq!(
            h[header::LINK],
            "<http://127.0.0.1:8080/github/repos/o/r/issues?page=2>; rel=\"next\", <https://other.example/x>; rel=\"help\""
        );
        assert_eq!(h[header::LOCATION], "http://127.0.0.1:8080/github/a");
    }
}
