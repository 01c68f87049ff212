//! An API that echoes a credential (an error body quoting the key, a debugging header, a
//! `Location` carrying it) must not hand it back to the app. Each credential knows its secret
//! parts, so it can take them out: every occurrence of a part, raw, base64, base64url or
//! percent-encoded, is replaced by the same number of `*` (lengths and framing unchanged).
//! Parts shorter than 8 bytes are not looked for (they would match ordinary text).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, percent_encode};
use zeroize::Zeroizing;

/// Shortest secret looked for.
const MIN_LEN: usize = 8;

/// The forms of every secret part to look for, each a searcher built once per load (every
/// response header is scanned: building a searcher per header would cost on every request).
/// Limitation: a searcher's copy of its needle is freed, not wiped.
#[derive(Default)]
pub(super) struct Needles(Vec<memchr::memmem::Finder<'static>>);

impl Needles {
    pub(super) fn of<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut out: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for s in secrets.into_iter().filter(|s| s.len() >= MIN_LEN) {
            let forms = [
                s.to_vec(),
                STANDARD_NO_PAD.encode(s).into_bytes(),
                URL_SAFE_NO_PAD.encode(s).into_bytes(),
                percent_encode(s, NON_ALPHANUMERIC).to_string().into_bytes(),
            ];
            for f in forms {
                if !out.iter().any(|n| **n == f) {
                    out.push(Zeroizing::new(f));
                }
            }
        }
        // Longest first: a raw key inside its own base64 form is found as the longer match.
        out.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Self(
            out.iter()
                .map(|n| memchr::memmem::Finder::new(n.as_slice()).into_owned())
                .collect(),
        )
    }

    /// Whether any form occurs in `bytes` (read-only: the common case allocates nothing).
    pub(super) fn found_in(&self, bytes: &[u8]) -> bool {
        self.0.iter().any(|f| f.find(bytes).is_some())
    }

    /// Replaces every occurrence with `*`; returns how many were found.
    pub(super) fn scrub(&self, bytes: &mut [u8]) -> usize {
        let mut found = 0;
        for finder in &self.0 {
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
