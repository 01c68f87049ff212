//! Path templates of the `path` credential scheme (`/bot{key}`, `/file/bot{key}`): pure
//! parsing and matching, so the allow-list can drop a client's placeholder copy of the
//! template before it matches, and the credential can render the real one in front of the
//! checked path.
//!
//! A template is `/`-anchored whole segments with exactly one `{key}`, which may have literal
//! text around it inside its own segment (`bot{key}`) but never spans a `/`.

use std::sync::Arc;

/// One parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    text: Arc<str>,
    /// Whole literal segments before the key's segment.
    before: Vec<String>,
    /// Literal text in the key's segment, before and after `{key}`.
    head: String,
    tail: String,
    /// Whole literal segments after the key's segment.
    after: Vec<String>,
}

/// Why a template is refused (`check` names the key and line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("must start with `/`")]
    NotAbsolute,
    #[error("must hold exactly one `{{key}}`")]
    KeyCount,
    #[error("segments must be non-empty plain text (no `?`, `#`, `%`, braces, `.` or `..`)")]
    BadSegment,
}

const KEY: &str = "{key}";

impl PathTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let rest = text.strip_prefix('/').ok_or(TemplateError::NotAbsolute)?;
        if text.matches(KEY).count() != 1 {
            return Err(TemplateError::KeyCount);
        }
        let mut before = Vec::new();
        let mut after = Vec::new();
        let mut key: Option<(String, String)> = None;
        for segment in rest.split('/') {
            if let Some((head, tail)) = segment.split_once(KEY) {
                if !plain(head, true) || !plain(tail, true) {
                    return Err(TemplateError::BadSegment);
                }
                key = Some((head.to_owned(), tail.to_owned()));
            } else if !plain(segment, false) {
                return Err(TemplateError::BadSegment);
            } else if key.is_some() {
                after.push(segment.to_owned());
            } else {
                before.push(segment.to_owned());
            }
        }
        let (head, tail) = key.ok_or(TemplateError::KeyCount)?;
        Ok(Self {
            text: Arc::from(text),
            before,
            head,
            tail,
            after,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Where the rest starts when `path` begins with this template holding any non-empty
    /// placeholder (`/bot<anything>/getMe` -> the index of `/getMe`).
    pub fn skip(&self, path: &str) -> Option<usize> {
        let mut at = 0;
        let mut segment = |want: &dyn Fn(&str) -> bool| -> Option<()> {
            let rest = path.get(at..)?.strip_prefix('/')?;
            let len = rest.find('/').unwrap_or(rest.len());
            want(rest.get(..len)?).then_some(())?;
            at += 1 + len;
            Some(())
        };
        for lit in &self.before {
            segment(&|s| s == lit)?;
        }
        segment(&|s| {
            s.len() > self.head.len() + self.tail.len()
                && s.starts_with(&self.head)
                && s.ends_with(&self.tail)
        })?;
        for lit in &self.after {
            segment(&|s| s == lit)?;
        }
        Some(at)
    }

    /// The template with `encoded_key` (already percent-encoded for a segment) in place.
    pub fn render(&self, encoded_key: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + encoded_key.len());
        for lit in &self.before {
            out.push('/');
            out.push_str(lit);
        }
        out.push('/');
        out.push_str(&self.head);
        out.push_str(encoded_key);
        out.push_str(&self.tail);
        for lit in &self.after {
            out.push('/');
            out.push_str(lit);
        }
        out
    }
}

/// Literal template text: unreserved characters and sub-delimiters only, never a dot
/// segment. `part`: text around `{key}`, which may be empty.
fn plain(s: &str, part: bool) -> bool {
    if !part && (s.is_empty() || s == "." || s == "..") {
        return false;
    }
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b))
}

/// Picks the template a path starts with (its index and where the rest starts), else `None`.
pub fn skip_any(templates: &[PathTemplate], path: &str) -> Option<(usize, usize)> {
    templates
        .iter()
        .enumerate()
        .find_map(|(i, t)| t.skip(path).map(|at| (i, at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert!(PathTemplate::parse("/bot{key}").is_ok());
        assert!(PathTemplate::parse("/file/bot{key}").is_ok());
        assert!(PathTemplate::parse("/v1/{key}/x").is_ok());
        assert_eq!(
            PathTemplate::parse("bot{key}"),
            Err(TemplateError::NotAbsolute)
        );
        assert_eq!(PathTemplate::parse("/bot"), Err(TemplateError::KeyCount));
        assert_eq!(
            PathTemplate::parse("/{key}/{key}"),
            Err(TemplateError::KeyCount)
        );
        assert_eq!(
            PathTemplate::parse("/a//{key}"),
            Err(TemplateError::BadSegment)
        );
        assert_eq!(
            PathTemplate::parse("/../{key}"),
            Err(TemplateError::BadSegment)
        );
        assert_eq!(
            PathTemplate::parse("/{key}?x"),
            Err(TemplateError::BadSegment)
        );
        assert_eq!(
            PathTemplate::parse("/{ke}{key}"),
            Err(TemplateError::BadSegment)
        );
    }

    #[test]
    fn skips_a_placeholder_copy_segment_wise() {
        let bot = PathTemplate::parse("/bot{key}").unwrap();
        assert_eq!(bot.skip("/botPLACEHOLDER/getMe"), Some(15));
        assert_eq!(bot.skip("/botX"), Some(5));
        assert_eq!(
            bot.skip("/bot/getMe"),
            None,
            "an empty placeholder is no template"
        );
        assert_eq!(bot.skip("/getMe"), None);
        assert_eq!(bot.skip("/x/botY/getMe"), None, "anchored at the start");
        let file = PathTemplate::parse("/file/bot{key}").unwrap();
        assert_eq!(file.skip("/file/botP/photos/a.jpg"), Some(10));
        assert_eq!(file.skip("/files/botP/a"), None);
        let both = [bot, file];
        assert_eq!(skip_any(&both, "/file/botP/a"), Some((1, 10)));
        assert_eq!(skip_any(&both, "/getMe"), None);
    }

    #[test]
    fn renders_around_the_key() {
        let t = PathTemplate::parse("/v1/k{key}z/x").unwrap();
        assert_eq!(t.render("123%2F4"), "/v1/k123%2F4z/x");
        assert_eq!(t.skip("/v1/kPz/x/rest"), Some(9));
    }
}
