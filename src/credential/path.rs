//! The `path` scheme: the key inside the path (Telegram's `/bot<token>/getMe`). The allow-list
//! checks the path without the template (`policy::template` drops a client's placeholder
//! copy first); here the template holding the key is put in front of exactly that checked
//! path. The key is percent-encoded so it stays inside its segment.

use http::Uri;
use http::uri::PathAndQuery;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use zeroize::Zeroizing;

use super::ApplyError;
use crate::policy::template::PathTemplate;

/// What cannot stand inside one path segment unencoded (RFC 3986 `pchar`), plus `;` (matrix
/// parameters to some servers) and `%` (so the key is never decoded into something else).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b';')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Each template with the key in place, rendered once per load.
pub(super) struct Rendered(Vec<Zeroizing<String>>);

impl Rendered {
    pub(super) fn new(templates: &[PathTemplate], key: &[u8]) -> Self {
        // Keys are visible ASCII (validated), so this is text.
        let text = std::str::from_utf8(key).unwrap_or_default();
        let encoded = Zeroizing::new(utf8_percent_encode(text, SEGMENT).to_string());
        Self(
            templates
                .iter()
                .map(|t| Zeroizing::new(t.render(&encoded)))
                .collect(),
        )
    }

    /// Template `index` (the one the client used, else the first) in front of the path.
    pub(super) fn apply(&self, uri: &Uri, index: usize) -> Result<Uri, ApplyError> {
        let prefix = self.0.get(index).or(self.0.first()).ok_or(ApplyError)?;
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut out = Zeroizing::new(String::with_capacity(prefix.len() + pq.len()));
        out.push_str(prefix);
        out.push_str(pq);
        PathAndQuery::try_from(out.as_str())
            .map(Uri::from)
            .map_err(|_| ApplyError)
    }

    /// The rendered templates (for taking the key back out of link headers).
    pub(super) fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_the_template_in_front() {
        let ts = [
            PathTemplate::parse("/bot{key}").unwrap(),
            PathTemplate::parse("/file/bot{key}").unwrap(),
        ];
        let r = Rendered::new(&ts, b"123:AB/C?%");
        let uri: Uri = "/getMe?x=1".parse().unwrap();
        assert_eq!(
            r.apply(&uri, 0).unwrap().to_string(),
            "/bot123:AB%2FC%3F%25/getMe?x=1"
        );
        assert_eq!(
            r.apply(&uri, 1).unwrap().to_string(),
            "/file/bot123:AB%2FC%3F%25/getMe?x=1"
        );
        assert_eq!(
            r.apply(&uri, 7).unwrap().to_string(),
            "/bot123:AB%2FC%3F%25/getMe?x=1"
        );
    }
}
