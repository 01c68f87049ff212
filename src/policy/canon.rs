//! Request-target screening and path canonicalisation.
//!
//! The proxy authorises exactly the bytes it forwards: this module turns the raw path of an
//! origin-form request target into one canonical spelling, or rejects it when any reading of
//! it is ambiguous. Nothing is resolved or guessed: dot segments, encoded separators and
//! malformed escapes are refused, never "fixed". The canonical form is a fixed point
//! (canonicalising it again returns it unchanged), so what `decide` matched is what the
//! upstream receives, byte for byte.

use std::borrow::Cow;

/// Longest raw path accepted (bytes); longer paths are answered with 414.
pub const MAX_PATH_LEN: usize = 8 * 1024;
/// Longest raw query accepted (bytes); longer queries are answered with 414.
pub const MAX_QUERY_LEN: usize = 16 * 1024;

/// Why a request target was refused. `reason()` is the stable string sent to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form: absolute-form, authority-form or `*`.
    NotOriginForm,
    /// The path or the query is longer than the limit.
    TooLong,
    /// A raw byte outside visible ASCII (control, space, DEL or non-ASCII).
    InvalidByte,
    /// A raw `\`.
    Backslash,
    /// A raw `;` (path parameters are read differently by different servers).
    Semicolon,
    /// An empty segment (`//`), including a leading `//host`.
    EmptySegment,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// `%2F`, `%5C`, `%25` or `%3B`: an escaped separator or escape character.
    EncodedDelimiter,
    /// An escaped control character (`%00`-`%1F`, `%7F`).
    EncodedControl,
    /// Escaped bytes >= 0x80 that are not strict UTF-8 (overlong forms, surrogates, truncation).
    InvalidUtf8,
    /// A `.` or `..` segment, raw or escaped.
    DotSegment,
}

impl PathError {
    /// Stable machine-readable reason, used in error bodies, logs and `explain`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotOriginForm => "not_origin_form",
            Self::TooLong => "too_long",
            Self::InvalidByte => "invalid_byte",
            Self::Backslash => "backslash",
            Self::Semicolon => "semicolon",
            Self::EmptySegment => "empty_segment",
            Self::MalformedEscape => "malformed_escape",
            Self::EncodedDelimiter => "encoded_delimiter",
            Self::EncodedControl => "encoded_control",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::DotSegment => "dot_segment",
        }
    }

    /// A sentence for humans (`explain`, error messages).
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotOriginForm => "only origin-form request targets (/path?query) are accepted",
            Self::TooLong => "the path or query is too long",
            Self::InvalidByte => "the path has a byte outside visible ASCII",
            Self::Backslash => "the path has a backslash",
            Self::Semicolon => "the path has a ';'",
            Self::EmptySegment => "the path has an empty segment ('//')",
            Self::MalformedEscape => "a '%' is not followed by two hex digits",
            Self::EncodedDelimiter => "the path has an encoded '/', '\\', '%' or ';'",
            Self::EncodedControl => "the path has an encoded control character",
            Self::InvalidUtf8 => "encoded non-ASCII bytes are not strict UTF-8",
            Self::DotSegment => "the path has a '.' or '..' segment",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for PathError {}

/// Unreserved characters (RFC 3986 section 2.3): their escapes are decoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reads the escape at `i` (which holds `%`): returns its byte value.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    let hi = bytes.get(i + 1).copied().and_then(hex_val);
    let lo = bytes.get(i + 2).copied().and_then(hex_val);
    match (hi, lo) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::MalformedEscape),
    }
}

/// Length of the UTF-8 sequence a leading byte announces (0 for a byte that cannot lead).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Screens a raw origin-form path and returns its canonical form.
///
/// Borrowed when the input is already canonical (the common case: no copy).
pub fn canonicalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // `out` is only allocated once the first byte that needs rewriting is seen.
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'%' => {
                let v = escape_at(bytes, i)?;
                if v >= 0x80 {
                    // A whole UTF-8 sequence must be escaped, each byte as %XX; keep it
                    // escaped (normalised to upper-case hex) once it proves strict UTF-8.
                    let n = utf8_len(v);
                    if n == 0 {
                        return Err(PathError::InvalidUtf8);
                    }
                    let mut seq = [0u8; 4];
                    for (k, slot) in seq.iter_mut().enumerate().take(n) {
                        let at = i + 3 * k;
                        if bytes.get(at) != Some(&b'%') {
                            return Err(PathError::InvalidUtf8);
                        }
                        *slot = escape_at(bytes, at)?;
                    }
                    if std::str::from_utf8(seq.get(..n).unwrap_or_default()).is_err() {
                        return Err(PathError::InvalidUtf8);
                    }
                    for &byte in seq.iter().take(n) {
                        push_escape(&mut out, bytes, i, byte);
                        i += 3;
                    }
                    continue;
                }
                match v {
                    b'/' | b'\\' | b'%' | b';' => return Err(PathError::EncodedDelimiter),
                    0x00..=0x1F | 0x7F => return Err(PathError::EncodedControl),
                    v if is_unreserved(v) => {
                        // Decode: `%41` and `A` must not be two spellings of one route.
                        out.get_or_insert_with(|| prefix(bytes, i)).push(v);
                    }
                    v => push_escape(&mut out, bytes, i, v),
                }
                i += 3;
                continue;
            }
            0x21..=0x7E => {
                if let Some(o) = out.as_mut() {
                    o.push(b);
                }
            }
            _ => return Err(PathError::InvalidByte),
        }
        i += 1;
    }
    let canonical = match out {
        // Only ASCII bytes were pushed, so this conversion cannot fail; map it anyway
        // rather than unwrap on request data.
        Some(o) => Cow::Owned(String::from_utf8(o).map_err(|_| PathError::InvalidUtf8)?),
        None => Cow::Borrowed(path),
    };
    check_segments(&canonical)?;
    Ok(canonical)
}

/// Copies `bytes[..i]` into a fresh buffer the first time a rewrite is needed.
fn prefix(bytes: &[u8], i: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len());
    v.extend_from_slice(bytes.get(..i).unwrap_or_default());
    v
}

/// Writes `%XX` in upper-case hex; only allocates if the source spelling differs.
fn push_escape(out: &mut Option<Vec<u8>>, bytes: &[u8], i: usize, v: u8) {
    let hi = HEX_UPPER[usize::from(v >> 4)];
    let lo = HEX_UPPER[usize::from(v & 0xF)];
    let same = bytes.get(i + 1) == Some(&hi) && bytes.get(i + 2) == Some(&lo);
    if out.is_none() && same {
        return;
    }
    out.get_or_insert_with(|| prefix(bytes, i))
        .extend_from_slice(&[b'%', hi, lo]);
}

/// Segment rules on the canonical path: no empty segment except a trailing one (a trailing
/// slash is part of the path), no `.` or `..` segment (after decoding, so `%2e` counts).
fn check_segments(canonical: &str) -> Result<(), PathError> {
    let rest = canonical.strip_prefix('/').unwrap_or(canonical);
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "" if !last => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

/// Screens a raw query: visible ASCII only and bounded; it is forwarded unchanged.
pub fn check_query(query: &str) -> Result<(), PathError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(PathError::TooLong);
    }
    if query.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        Ok(())
    } else {
        Err(PathError::InvalidByte)
    }
}

#[cfg(test)]
#[path = "canon_tests.rs"]
mod tests;
