//! The `query` scheme: the key as one query parameter (`?key=...`). Every caller parameter of
//! that name, in any percent-encoded spelling of the name, is removed; the other pairs keep
//! their exact bytes and order (never re-serialised: servers read re-escaped values
//! differently), and `param=<key>` is appended, the key percent-encoded so no character of it
//! can start another pair.

use http::Uri;
use http::uri::PathAndQuery;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use zeroize::Zeroizing;

use super::ApplyError;

/// Everything but RFC 3986's unreserved characters.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `param=<key>`, encoded once per load.
pub(super) struct Pair {
    param: String,
    encoded: Zeroizing<String>,
}

impl Pair {
    pub(super) fn new(param: &str, key: &[u8]) -> Self {
        let mut encoded = Zeroizing::new(String::new());
        encoded.extend(utf8_percent_encode(param, VALUE));
        encoded.push('=');
        // Keys are visible ASCII (validated), so this is text.
        encoded.extend(utf8_percent_encode(
            std::str::from_utf8(key).unwrap_or_default(),
            VALUE,
        ));
        Self {
            param: param.to_owned(),
            encoded,
        }
    }

    /// The caller's copies removed, ours appended.
    pub(super) fn apply(&self, uri: &Uri) -> Result<Uri, ApplyError> {
        let mut out = Zeroizing::new(String::with_capacity(
            uri.path().len() + uri.query().map_or(0, str::len) + self.encoded.len() + 2,
        ));
        out.push_str(uri.path());
        out.push('?');
        if let Some(query) = uri.query() {
            for pair in query.split('&').filter(|p| !self.names_ours(p)) {
                out.push_str(pair);
                out.push('&');
            }
        }
        out.push_str(&self.encoded);
        PathAndQuery::try_from(out.as_str())
            .map(Uri::from)
            .map_err(|_| ApplyError)
    }

    /// `pair`'s name, decoded (`%6Bey`, `ke%79`, form-style `+`), is the parameter's.
    fn names_ours(&self, pair: &str) -> bool {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if name.len() == self.param.len() && !name.contains(['%', '+']) {
            return name == self.param;
        }
        let spaced = name.replace('+', " ");
        let decoded: Vec<u8> = percent_decode_str(&spaced).collect();
        decoded == self.param.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(uri: &str) -> String {
        let p = Pair::new("key", b"s3cr/t&x=1+");
        p.apply(&uri.parse().unwrap()).unwrap().to_string()
    }

    #[test]
    fn removes_every_spelling_and_appends_once() {
        assert_eq!(run("/maps"), "/maps?key=s3cr%2Ft%26x%3D1%2B");
        assert_eq!(
            run("/maps?key=caller&a=%2F+b&k%65y=2&KEY=3&key"),
            "/maps?a=%2F+b&KEY=3&key=s3cr%2Ft%26x%3D1%2B"
        );
        assert_eq!(run("/m?b=2&&a=1"), "/m?b=2&&a=1&key=s3cr%2Ft%26x%3D1%2B");
    }
}
