//! An API that echoes a credential (an error body quoting the key, a debugging header, a
//! `Location` carrying it) must not hand it back to the app. Each credential knows its secret
//! parts, so it can take them out: every occurrence of a part, raw, base64, base64url or
//! percent-encoded or JSON-escaped (`\/`, `\u0026`), is replaced by the same number of `*`
//! (lengths and framing unchanged). Parts shorter than 8 bytes are not looked for (they would
//! match ordinary text).
//!
//! Streamed bodies are scanned chunk by chunk: [`Needles::held_tail`] says how much of a
//! chunk's end could still be the start of a secret (held back until the next chunk).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, percent_encode};
use zeroize::Zeroizing;

use std::time::Duration;

use crate::telemetry::WarnBudget;

/// Shortest secret looked for.
const MIN_LEN: usize = 8;

/// The forms of every secret part to look for, each a searcher built once per load (every
/// response header is scanned: building a searcher per header would cost on every request).
/// Limitation: a searcher's copy of its needle is freed, not wiped.
pub struct Needles {
    finders: Vec<memchr::memmem::Finder<'static>>,
    /// Bytes any form starts with (a chunk's tail is checked from those only).
    first: [bool; 256],
    longest: usize,
    /// One echo warning per period for this credential (every echo is still counted).
    warnings: WarnBudget,
}

/// At most one echo warning per credential this often; the next one says how many echoes
/// were left out (`sidekey_key_echoes_total` counts each).
const ECHO_WARN_EVERY: Duration = Duration::from_secs(10);

impl Default for Needles {
    fn default() -> Self {
        Self {
            finders: Vec::new(),
            first: [false; 256],
            longest: 0,
            warnings: WarnBudget::new(ECHO_WARN_EVERY),
        }
    }
}

/// A JSON encoder's escapes of a visible-ASCII secret: PHP-style (`\/`) and Go-style
/// (`\u003c`, `\u003e`, `\u0026`); `"` and `\` by both.
fn json_forms(s: &[u8]) -> [Vec<u8>; 2] {
    let mut php = Vec::with_capacity(s.len() + 8);
    let mut go = Vec::with_capacity(s.len() + 8);
    for &b in s {
        match b {
            b'"' | b'\\' => {
                php.extend_from_slice(&[b'\\', b]);
                go.extend_from_slice(&[b'\\', b]);
            }
            b'/' => {
                php.extend_from_slice(b"\\/");
                go.push(b);
            }
            b'<' | b'>' | b'&' => {
                php.push(b);
                go.extend_from_slice(format!("\\u{b:04x}").as_bytes());
            }
            _ => {
                php.push(b);
                go.push(b);
            }
        }
    }
    [php, go]
}

impl Needles {
    pub(super) fn of<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut out: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for s in secrets.into_iter().filter(|s| s.len() >= MIN_LEN) {
            let [php, go] = json_forms(s);
            let forms = [
                s.to_vec(),
                STANDARD_NO_PAD.encode(s).into_bytes(),
                URL_SAFE_NO_PAD.encode(s).into_bytes(),
                percent_encode(s, NON_ALPHANUMERIC).to_string().into_bytes(),
                php,
                go,
            ];
            for f in forms {
                if !out.iter().any(|n| **n == f) {
                    out.push(Zeroizing::new(f));
                }
            }
        }
        // Longest first: a raw key inside its own base64 form is found as the longer match.
        out.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let mut first = [false; 256];
        for n in &out {
            if let Some(&b) = n.first() {
                first[usize::from(b)] = true;
            }
        }
        Self {
            longest: out.first().map_or(0, |n| n.len()),
            first,
            finders: out
                .iter()
                .map(|n| memchr::memmem::Finder::new(n.as_slice()).into_owned())
                .collect(),
            warnings: WarnBudget::new(ECHO_WARN_EVERY),
        }
    }

    /// Both sets of forms (longest first, each once).
    pub fn union(&self, other: &Needles) -> Needles {
        let mut finders = self.finders.clone();
        for f in &other.finders {
            if !finders.iter().any(|g| g.needle() == f.needle()) {
                finders.push(f.clone());
            }
        }
        finders.sort_by_key(|f| std::cmp::Reverse(f.needle().len()));
        let mut first = self.first;
        for (a, b) in first.iter_mut().zip(other.first) {
            *a |= b;
        }
        Needles {
            longest: self.longest.max(other.longest),
            first,
            finders,
            warnings: WarnBudget::new(ECHO_WARN_EVERY),
        }
    }

    /// `Some(n)`: log this echo, `n` echoes were not logged since the last warning.
    pub fn may_warn(&self) -> Option<u64> {
        self.warnings.may_warn()
    }

    /// Whether there is anything to look for.
    pub fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }

    /// Whether any form occurs in `bytes` (read-only: the common case allocates nothing).
    pub fn found_in(&self, bytes: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(bytes).is_some())
    }

    /// How many bytes at the end of `bytes` are a proper prefix of some form: they could be
    /// the start of a secret that the next chunk completes.
    pub fn held_tail(&self, bytes: &[u8]) -> usize {
        let window = self.longest.saturating_sub(1).min(bytes.len());
        let start = bytes.len() - window;
        for at in start..bytes.len() {
            let Some(&b) = bytes.get(at) else { break };
            if !self.first[usize::from(b)] {
                continue;
            }
            let tail = bytes.get(at..).unwrap_or_default();
            if self
                .finders
                .iter()
                .any(|f| f.needle().len() > tail.len() && f.needle().starts_with(tail))
            {
                return tail.len();
            }
        }
        0
    }

    /// Replaces every occurrence with `*`; returns how many were found.
    pub fn scrub(&self, bytes: &mut [u8]) -> usize {
        let mut found = 0;
        for finder in &self.finders {
            let len = finder.needle().len();
            let mut at = 0;
            while let Some(i) = bytes.get(at..).and_then(|rest| finder.find(rest)) {
                let start = at + i;
                let end = start + len;
                if let Some(hit) = bytes.get_mut(start..end) {
                    hit.fill(b'*');
                }
                found += 1;
                at = end;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_held_tails() {
        let n = Needles::of([&b"sk/live&0123456789"[..]]);
        let mut php = br#"{"key":"sk\/live&0123456789"}"#.to_vec();
        assert_eq!(n.scrub(&mut php), 1);
        let mut go = br#"{"key":"sk/live\u00260123456789"}"#.to_vec();
        assert_eq!(n.scrub(&mut go), 1);
        assert!(!String::from_utf8(go).unwrap().contains("0123456789"));
        assert_eq!(n.held_tail(b"data: sk/li"), 5);
        assert_eq!(n.held_tail(b"data: {}\n\n"), 0);
        assert_eq!(n.held_tail(b"s"), 1);
        assert_eq!(n.held_tail(b""), 0);
    }

    #[test]
    fn every_form_is_starred_in_place() {
        let n = Needles::of([&b"sk_live_0123456789"[..], b"short"]);
        let b64 = STANDARD_NO_PAD.encode("sk_live_0123456789");
        let text =
            format!("key=sk_live_0123456789; b64={b64}==; pct=sk%5Flive%5F0123456789; short");
        let mut bytes = text.clone().into_bytes();
        assert_eq!(n.scrub(&mut bytes), 3);
        let out = String::from_utf8(bytes).unwrap();
        assert_eq!(out.len(), text.len());
        assert!(
            !out.contains("sk_live") && !out.contains(&b64) && !out.contains("0123456789"),
            "{out}"
        );
        assert!(
            out.ends_with("; short"),
            "parts under 8 bytes are left alone: {out}"
        );
    }
}
